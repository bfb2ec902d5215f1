//! The stop signal: a value handed to every long-running loop.
//!
//! A `ShutdownTrigger` is held by whoever may stop the daemon (the signal handler in `main`,
//! or a test). Firing it closes a channel, which wakes every `Shutdown::wait` at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Shutdown {
    fired: Arc<AtomicBool>,
    closed: async_channel::Receiver<()>,
}

#[derive(Clone, Debug)]
pub struct ShutdownTrigger {
    fired: Arc<AtomicBool>,
    sender: async_channel::Sender<()>,
}

/// A connected trigger and signal.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let fired = Arc::new(AtomicBool::new(false));
    let (sender, closed) = async_channel::bounded(1);
    (
        ShutdownTrigger {
            fired: fired.clone(),
            sender,
        },
        Shutdown { fired, closed },
    )
}

impl ShutdownTrigger {
    pub fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        self.sender.close();
    }
}

impl Shutdown {
    /// Dropping every trigger counts as firing: nobody is left who could stop us otherwise.
    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst) || self.closed.is_closed()
    }

    /// Completes once the trigger fires (or every trigger is dropped).
    pub async fn wait(&self) {
        // Nothing is ever sent: recv returns only when the channel is closed.
        let _ = self.closed.recv().await;
    }
}
