//! A handle's own decryption threads, joined when the handle is closed.
//!
//! Rayon lets a dropped pool's threads finish on their own time. A C caller may unload the
//! library right after `enct_close`, and code still running in those threads would then
//! crash, so a handle keeps its threads' join handles and waits for them.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

pub(super) struct OwnPool {
    /// `None` only while dropping: the pool must go first, so its threads see the end.
    pool: Option<rayon::ThreadPool>,
    threads: Vec<JoinHandle<()>>,
    /// Threads whose work loop has not returned yet.
    running: Arc<AtomicUsize>,
}

impl OwnPool {
    pub(super) fn new(n: usize) -> Result<Self, io::Error> {
        let mut threads = Vec::with_capacity(n);
        let running = Arc::new(AtomicUsize::new(0));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("enctensor-{i}"))
            .spawn_handler(|thread| {
                let mut b = std::thread::Builder::new();
                if let Some(name) = thread.name() {
                    b = b.name(name.to_owned());
                }
                if let Some(size) = thread.stack_size() {
                    b = b.stack_size(size);
                }
                let live = Live::new(&running);
                let spawned = b.spawn(move || {
                    let _live = live;
                    thread.run();
                });
                threads.push(spawned?);
                Ok(())
            })
            .build()
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self {
            pool: Some(pool),
            threads,
            running,
        })
    }

    pub(super) fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }
}

/// Counts a pool thread as running until it is dropped, at the end of the thread, even if it
/// panics.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(running: &Arc<AtomicUsize>) -> Self {
        running.fetch_add(1, Ordering::SeqCst);
        Live(Arc::clone(running))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for OwnPool {
    fn drop(&mut self) {
        // Dropping the pool tells its threads to end once idle; no read runs during close
        // (the C contract), so each ends promptly and the joins do not wait on work.
        drop(self.pool.take());
        for t in self.threads.drain(..) {
            // A thread that panicked has nothing left to clean up; close still succeeds.
            let _ = t.join();
        }
        debug_assert_eq!(
            self.running.load(Ordering::SeqCst),
            0,
            "a pool thread outlived its handle"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::OwnPool;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    #[test]
    fn threads_have_ended_when_dropped() {
        let pool = OwnPool::new(3).unwrap();
        assert_eq!(pool.install(|| 6 * 7), 42);
        // Every thread runs: each answers a broadcast.
        assert_eq!(pool.pool.as_ref().unwrap().broadcast(|_| 1).len(), 3);
        assert_eq!(pool.running.load(Ordering::SeqCst), 3);
        let running = Arc::clone(&pool.running);
        drop(pool);
        // No waiting: every thread's work loop has returned once drop has.
        assert_eq!(running.load(Ordering::SeqCst), 0);
    }
}
