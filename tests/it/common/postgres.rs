//! A throwaway PostgreSQL server for the tests, from the server binaries installed on the
//! machine (Debian's `postgresql` package puts them under /usr/lib/postgresql/N/bin; the
//! environment variable CRAWLQ_TEST_PG_BIN names another directory). Nothing has to run
//! beforehand: the first test that needs the server creates a cluster in a temp dir and
//! starts it on a Unix socket there (no TCP port to collide with), and each test gets a
//! database of its own in it.
//!
//! As root (CI, containers) the server runs as the `postgres` system user, since it refuses
//! to run as root. It is started from a thread that lives as long as the test program, with
//! the parent-death signal set, so it stops when the test program ends, however it ends.
//!
//! Without the binaries: under CI (`CI` set) that is a failure; elsewhere each test that
//! needed the server says loudly that it was skipped, and the count is printed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// How long a server may take to start (initdb included).
const START_DEADLINE: Duration = Duration::from_secs(60);

static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);
static SKIPPED: AtomicUsize = AtomicUsize::new(0);

/// A running server: its cluster directory and the socket directory clients connect to.
pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    /// The postmaster, while it runs (`stop` and `start` change it).
    child: Mutex<Option<Child>>,
    /// The port in the socket's name (and on TCP, when a test listens there).
    port: u16,
    /// Settings (`name=value`) a test asked for, passed to each start.
    settings: Vec<String>,
}

/// A database of its own for one test, on a server.
pub struct PgDatabase {
    /// The URL crawlq is given (`postgres://postgres@localhost/NAME?host=SOCKET_DIR`).
    pub url: String,
}

/// The directory holding `initdb`, `postgres` and `pg_ctl`.
fn server_binaries() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("CRAWLQ_TEST_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no PostgreSQL server binaries: /usr/lib/postgresql: {e}"))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no PostgreSQL server binaries under /usr/lib/postgresql".to_owned())
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() == 0 }
}

/// The `postgres` system user's uid and gid, to run the server as when we are root.
fn postgres_user() -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| "running as root, and there is no postgres user to run the server as".into())
}

/// Clusters left in the temp dir by test programs that are gone (the shared server's
/// directory outlives its program: statics are not dropped).
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("crawlq-test-pg-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A command that runs as the `postgres` user when we are root.
fn as_server_user(program: PathBuf) -> Result<Command, String> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    if is_root() {
        let (uid, gid) = postgres_user()?;
        command.uid(uid).gid(gid);
    }
    Ok(command)
}

impl PgServer {
    /// A new cluster in a temp dir, started.
    pub fn start_new() -> Result<PgServer, String> {
        PgServer::start_new_with(5432, |_| Ok(Vec::new()))
    }

    /// A new cluster whose data directory `setup` prepares (certificates, pg_hba.conf)
    /// before the first start, returning settings (`name=value`) for every start; the
    /// server's socket (and TCP port, if a setting listens on TCP) is `port`.
    pub fn start_new_with(
        port: u16,
        setup: impl FnOnce(&Path) -> Result<Vec<String>, String>,
    ) -> Result<PgServer, String> {
        let bin = server_binaries()?;
        let dir = std::env::temp_dir().join(format!(
            "crawlq-test-pg-{}-{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        ));
        remove_stale_clusters();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if is_root() {
            let (uid, gid) = postgres_user()?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let out = as_server_user(bin.join("initdb"))?
            .args(["-D"])
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let settings = setup(&dir.join("data"))?;
        if is_root() {
            // What setup wrote must be the server user's (it refuses a key others can read).
            let (uid, gid) = postgres_user()?;
            for entry in std::fs::read_dir(dir.join("data")).map_err(|e| e.to_string())? {
                let path = entry.map_err(|e| e.to_string())?.path();
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", path.display()))?;
            }
        }
        let server = PgServer {
            dir,
            bin,
            child: Mutex::new(None),
            port,
            settings,
        };
        server.start()?;
        Ok(server)
    }

    /// Starts the postmaster (again) on the cluster and waits until it takes connections.
    pub fn start(&self) -> Result<(), String> {
        let mut command = as_server_user(self.bin.join("postgres"))?;
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-k")
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=",
                // No disk syncs: the tests crash the server process, never the machine,
                // and a process crash keeps what the operating system was given.
                // synchronous_commit stays on, as on a user's server: a commit the daemon
                // was told of survives the crash.
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
            ])
            .arg(format!("port={}", self.port));
        for setting in &self.settings {
            command.arg("-c").arg(setting);
        }
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("server.log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        );
        // Signalled when the thread that started it ends: that thread lives as long as the
        // test program (see `on_keeper_thread`).
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                // SIGINT: a fast shutdown, which does not wait for clients to leave.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = on_keeper_thread(move || command.spawn())
            .map_err(|e| format!("starting postgres: {e}"))?;
        *self.child.lock().unwrap() = Some(child);
        let started = Instant::now();
        let socket = self.dir.join(format!(".s.PGSQL.{}", self.port));
        while !socket.exists() || !self.accepts_connections() {
            let exited = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(format!(
                    "postgres exited ({status}): {}",
                    std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
                ));
            }
            if started.elapsed() > START_DEADLINE {
                return Err(format!(
                    "postgres did not start within {START_DEADLINE:?}: {}",
                    std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn accepts_connections(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .arg("-h")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-q"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the server at once (SIGQUIT: immediate shutdown, as a crash would), and waits
    /// for it to be gone.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@localhost/{name}?host={}&port={}",
            self.dir.display(),
            self.port
        )
    }

    /// A new, empty database on this server.
    pub async fn database(&self) -> PgDatabase {
        let name = format!("t{}", DATABASES.fetch_add(1, Ordering::SeqCst));
        let admin = connect(&self.url("postgres")).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        admin.close().await;
        PgDatabase {
            url: self.url(&name),
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("KEEP_PG").is_some() {
            eprintln!("kept {}", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `start` on a thread that lives until the test program ends, so that a child given
/// the parent-death signal there is stopped when the program ends, not when a test's
/// thread does.
fn on_keeper_thread<T: Send + 'static>(start: impl FnOnce() -> T + Send + 'static) -> T {
    type Job = Box<dyn FnOnce() + Send>;
    static KEEPER: OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("postgres-keeper".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawn the keeper thread");
        Mutex::new(tx)
    });
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    keeper
        .lock()
        .unwrap()
        .send(Box::new(move || {
            let _ = done_tx.send(start());
        }))
        .expect("the keeper thread runs");
    done_rx.recv().expect("the keeper thread answers")
}

/// The server the tests share, started on first use; None (after saying so loudly) when
/// this machine has no PostgreSQL server binaries and this is not CI.
pub fn shared() -> Option<&'static PgServer> {
    match SHARED.get_or_init(PgServer::start_new) {
        Ok(server) => Some(server),
        Err(why) => {
            cannot_run(why);
            None
        }
    }
}

/// A PostgreSQL test cannot run here: under CI that fails it; elsewhere it is skipped,
/// loudly and counted.
pub fn cannot_run(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("PostgreSQL is needed for the tests under CI: {why}");
    }
    let skipped = SKIPPED.fetch_add(1, Ordering::SeqCst) + 1;
    eprintln!(
        "SKIPPED a PostgreSQL test ({skipped} so far): {why} \
         (install the postgresql package to run them)"
    );
}

/// A pool for the test's own SQL, as a user's client would have.
pub async fn connect(url: &str) -> PgPool {
    let options = PgConnectOptions::from_str(url).expect("a valid test URL");
    PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}
