//! Which network addresses crawlq may connect to: the guard for deployments where the
//! people who insert jobs are not fully trusted (`fetch.block_private_addresses`).
//!
//! A job's URL could otherwise make the daemon fetch the machine's own services, the
//! cloud's metadata endpoint (169.254.169.254) or anything on the private network, and
//! store the answer where the job's author can read it. With the guard on, every request
//! (each redirect hop and each robots.txt included) resolves its host first, refuses it if
//! any address is loopback, private, link-local or otherwise not public, and then connects
//! to the address it checked, so a DNS answer that changes between the check and the
//! connection (DNS rebinding) cannot get past it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The guard's settings, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddressPolicy {
    /// Refuse addresses that are not public.
    pub block_private: bool,
    /// Networks allowed even so (an internal service the crawler must reach).
    pub allowed: Vec<IpNet>,
}

impl AddressPolicy {
    /// Why `address` may not be connected to, or None if it may.
    pub fn refusal(&self, address: IpAddr) -> Option<&'static str> {
        if !self.block_private || self.allowed.iter().any(|net| net.contains(&address)) {
            return None;
        }
        not_public(address)
    }
}

/// The kind of a non-public address ("loopback", "private", …), or None for a public one.
pub fn not_public(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => not_public_v4(v4),
        IpAddr::V6(v6) => {
            // An IPv4 address written as IPv6 (::ffff:127.0.0.1) is that IPv4 address.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return not_public_v4(v4);
            }
            not_public_v6(v6)
        }
    }
}

fn not_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified (\"this host\")")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("broadcast, multicast or reserved")
    } else if ip.is_documentation() || (a == 198 && (b == 18 || b == 19)) || (a, b) == (192, 0) {
        Some("reserved (documentation, benchmarking or protocol assignments)")
    } else {
        None
    }
}

fn not_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified (\"this host\")")
    } else if ip.is_unique_local() {
        Some("private (unique local)")
    } else if ip.is_unicast_link_local() || first & 0xffc0 == 0xfec0 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("broadcast, multicast or reserved")
    } else if ip.segments()[..6] == [0; 6] {
        // IPv4-compatible (::a.b.c.d, deprecated): judge the IPv4 address in it.
        let [.., hi, lo] = ip.segments();
        not_public_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(address: &str) -> Option<&'static str> {
        not_public(address.parse().unwrap())
    }

    #[test]
    fn non_public_addresses_are_named() {
        for (address, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("fe80::1", "link-local"),
            ("fd00::1", "private (unique local)"),
            ("0.0.0.0", "unspecified (\"this host\")"),
            ("::", "unspecified (\"this host\")"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("224.0.0.1", "broadcast, multicast or reserved"),
            ("255.255.255.255", "broadcast, multicast or reserved"),
        ] {
            assert_eq!(kind(address), Some(expected), "{address}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for address in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:2800:220:1::1",
            "100.128.0.1",
        ] {
            assert_eq!(kind(address), None, "{address}");
        }
    }

    #[test]
    fn the_guard_is_off_by_default_and_honours_allowed_networks() {
        let loopback: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(AddressPolicy::default().refusal(loopback), None);
        let mut policy = AddressPolicy {
            block_private: true,
            allowed: vec![],
        };
        assert_eq!(policy.refusal(loopback), Some("loopback"));
        policy.allowed = vec!["127.0.0.2/32".parse().unwrap()];
        assert_eq!(policy.refusal(loopback), None);
        assert_eq!(
            policy.refusal("127.0.0.1".parse().unwrap()),
            Some("loopback")
        );
    }
}
