# Writes one line per HTTP request sent to a port on the loopback interface: the kernel's
# timestamp (microseconds) of the packet carrying the request line, the destination
# address and the path. Needs root (AF_PACKET). Shared by politeness.sh and hosts.sh.
# With tcpdump installed, a kernel filter passes only the packets that start a GET: Python
# reading every packet on lo took a core of its own at 2 000 requests a second, which the
# crawler under test then did not have.
#   python3 bench/wire.py PORT OUT_FILE
import ctypes, shutil, socket, struct, subprocess, sys
port, out = int(sys.argv[1]), open(sys.argv[2], "w", buffering=1)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
if shutil.which("tcpdump"):
    expr = f"tcp dst port {port} and tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420"
    code = subprocess.run(["tcpdump", "-i", "lo", "-dd", expr], capture_output=True, text=True,
                          check=True).stdout
    ops = [tuple(int(x, 0) for x in line.strip(" {},").split(",")) for line in code.splitlines() if line.strip()]
    insns = (ctypes.c_ubyte * (8 * len(ops)))()
    for i, (c, jt, jf, k) in enumerate(ops):
        struct.pack_into("HBBI", insns, 8 * i, c, jt, jf, k)
    prog = struct.pack("HL", len(ops), ctypes.addressof(insns))
    SO_ATTACH_FILTER = 26
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
s.bind(("lo", 0))
SO_TIMESTAMPNS = 35
s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 26)
while True:
    data, anc, _, addr = s.recvmsg(65535, 1024)
    if addr[2] == socket.PACKET_OUTGOING:   # lo shows every packet twice
        continue
    ip = data[14:]
    if len(ip) < 20 or ip[9] != 6:
        continue
    tcp = ip[(ip[0] & 15) * 4:]
    if struct.unpack("!H", tcp[2:4])[0] != port:
        continue
    payload = tcp[(tcp[12] >> 4) * 4:]
    if payload.startswith(b"GET "):
        ts = next(struct.unpack("qq", d[:16]) for _, t, d in anc if t == SO_TIMESTAMPNS)
        out.write(f"{ts[0] + ts[1] / 1e9:.6f} {socket.inet_ntoa(ip[16:20])} {payload.split(b' ', 2)[1].decode()}\n")
