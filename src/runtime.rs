//! The async runtime, behind one small module.
//!
//! async-std is deprecated upstream; everything else in crawlq reaches the runtime through
//! these functions, so moving to another executor means rewriting only this file.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A lock that can be held across an `.await` (a task waits for it without blocking a thread).
pub use async_std::sync::Mutex as AsyncMutex;
/// A guard of an [`AsyncMutex`].
pub use async_std::sync::MutexGuard as AsyncMutexGuard;
/// A guard of an [`AsyncMutex`] held through an `Arc`, so it can outlive the borrow.
pub use async_std::sync::MutexGuardArc as AsyncMutexGuardArc;
pub use async_std::task::JoinHandle;

/// Runs a future to completion on the current thread (the entry point of `main` and tests).
pub fn block_on<F: Future>(future: F) -> F::Output {
    async_std::task::block_on(future)
}

/// Spawns a task onto the executor's thread pool.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    async_std::task::spawn(future)
}

/// Stops a spawned task at its next await (its future is dropped, and with it whatever
/// it held) and returns once it has stopped.
pub async fn abort<T>(task: JoinHandle<T>) {
    task.cancel().await;
}

/// Runs CPU-bound work (HTML parsing, robots.txt rules) off the threads that drive I/O,
/// at most one piece per core at a time: more would only share the cores, and each piece
/// holds its page's DOM (tens of MB for a page of 100 000 links) while it runs.
pub async fn run_cpu_bound<F, T>(work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    static CORES: OnceLock<Arc<async_lock::Semaphore>> = OnceLock::new();
    let cores = CORES.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(async_lock::Semaphore::new(cores))
    });
    let core = cores.acquire_arc().await;
    // The slot goes with the work: if the caller stops waiting, the work still runs, and
    // still holds its core until it ends.
    async_std::task::spawn_blocking(move || {
        let _core = core;
        work()
    })
    .await
}

/// Runs blocking I/O (a diagnostic connection with a blocking client) off the threads that
/// drive async I/O. Not for CPU-bound work: see [`run_cpu_bound`].
pub async fn run_blocking<F, T>(work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    async_std::task::spawn_blocking(work).await
}

/// The addresses `host` resolves to (the system resolver, off the I/O threads).
pub async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
    use async_std::net::ToSocketAddrs;
    Ok((host, port).to_socket_addrs().await?.collect())
}

pub async fn sleep(duration: Duration) {
    async_std::task::sleep(duration).await
}

/// Elapsed: the future did not finish within its time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pub async fn timeout<F: Future>(limit: Duration, future: F) -> Result<F::Output, Elapsed> {
    async_std::future::timeout(limit, future)
        .await
        .map_err(|_| Elapsed)
}

/// What a caught panic said, for a log line or a job's error.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Counts one more in a shared counter for as long as it lives (a task in some phase of
/// its work, for another task to read without asking it). It owns its handle on the
/// counter, so it can be made before a task is spawned and moved into it.
pub struct Counted(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Counted {
    pub fn new(count: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Counted {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted(count.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
