//! A handle's own decryption threads, joined when the handle is closed.
//!
//! Rayon lets a dropped pool's threads finish on their own time. A C caller may unload the
//! library right after `enct_close`, and code still running in those threads would then
//! crash, so a handle keeps its threads' join handles and waits for them.

use std::io;
use std::thread::JoinHandle;

pub(super) struct OwnPool {
    /// `None` only while dropping: the pool must go first, so its threads see the end.
    pool: Option<rayon::ThreadPool>,
    threads: Vec<JoinHandle<()>>,
}

impl OwnPool {
    pub(super) fn new(n: usize) -> Result<Self, io::Error> {
        let mut threads = Vec::with_capacity(n);
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
                threads.push(b.spawn(|| thread.run())?);
                Ok(())
            })
            .build()
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self {
            pool: Some(pool),
            threads,
        })
    }

    pub(super) fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
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
    }
}

#[cfg(test)]
mod tests {
    use super::OwnPool;
    use std::path::PathBuf;

    #[test]
    fn threads_have_ended_when_dropped() {
        let pool = OwnPool::new(3).unwrap();
        // Each thread's /proc entry ("<pid>/task/<tid>"), asked on the thread itself.
        let tasks: Vec<PathBuf> = pool.pool.as_ref().unwrap().broadcast(|_| {
            PathBuf::from("/proc").join(std::fs::read_link("/proc/thread-self").unwrap())
        });
        assert_eq!(tasks.len(), 3);
        assert!(tasks.iter().all(|t| t.exists()));
        drop(pool);
        // No waiting: the threads are gone once drop returns.
        for t in &tasks {
            assert!(!t.exists(), "{} is still running", t.display());
        }
    }
}
