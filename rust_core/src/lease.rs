//! When a chunk may be decrypted straight out of the file's map.
//!
//! A one-pass decrypt reads the ciphertext from the page cache, and BoringSSL's GCM code reads
//! each block twice (once for GHASH, once for the XOR). If another process wrote into the file
//! between those two reads, the tag could verify bytes other than those decrypted: a forgery
//! without the key. So the map is read directly only while the kernel guarantees that nobody
//! can write the file: under a read lease (`fcntl(F_SETLEASE, F_RDLCK)`), which is refused
//! while anyone has the file open for writing (a writable shared mapping counts), and which
//! makes any later `open` for writing or `truncate` wait until the lease is released (or until
//! `/proc/sys/fs/lease-break-time` has passed, after which the kernel revokes it). Everything
//! else (not the file's owner and no CAP_LEASE, a network file system, leases disabled,
//! `ENCTENSOR_READ=copy`) reads through the private copy: `pread` into the destination, then
//! decrypt there.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How chunks are read: `OnePass` from the map into the destination, or `Copy` (`pread` into
/// the destination, then decrypt in place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    OnePass,
    Copy,
}

/// 0: not read yet, 1: one pass where allowed, 2: always the private copy.
static PREFERRED: AtomicU8 = AtomicU8::new(0);

/// `ENCTENSOR_READ=copy` forces the two-pass path (a host where leases misbehave can opt out),
/// read once per process; [`set_preferred`] changes it (benches compare the two in one run).
pub fn preferred() -> ReadMode {
    let mut v = PREFERRED.load(Ordering::Relaxed);
    if v == 0 {
        v = match std::env::var("ENCTENSOR_READ").as_deref() {
            Ok("copy") => 2,
            _ => 1,
        };
        PREFERRED.store(v, Ordering::Relaxed);
    }
    if v == 2 {
        ReadMode::Copy
    } else {
        ReadMode::OnePass
    }
}

pub fn set_preferred(mode: ReadMode) {
    let v = if mode == ReadMode::Copy { 2 } else { 1 };
    PREFERRED.store(v, Ordering::Relaxed);
}

/// How long the kernel lets a writer wait for a lease, read once per process (and only when a
/// lease was found broken): not on every read.
fn break_time() -> Duration {
    static SECS: OnceLock<u64> = OnceLock::new();
    Duration::from_secs(*SECS.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/fs/lease-break-time")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(45)
    }))
}

/// The read lease of one open file, shared by the reads running on it at once: taken by the
/// first, released by the last.
pub struct Lease {
    fd: RawFd,
    local: bool,
    state: Mutex<Holders>,
}

struct Holders {
    count: usize,
    since: Option<Instant>,
}

impl Lease {
    /// For `file`, which must outlive this value (the reader keeps both).
    pub fn new(file: &std::fs::File) -> Lease {
        Lease {
            fd: file.as_raw_fd(),
            local: sys::local_file_system(file.as_raw_fd()),
            state: Mutex::new(Holders {
                count: 0,
                since: None,
            }),
        }
    }

    /// Starts a read: `OnePass` if the lease is (now) held, else `Copy`. Every call must be
    /// paired with [`Lease::end`] given the same mode.
    pub fn begin(&self) -> ReadMode {
        if preferred() == ReadMode::Copy || !self.local {
            return ReadMode::Copy;
        }
        let mut h = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if h.count == 0 {
            if !sys::take(self.fd) {
                return ReadMode::Copy;
            }
            h.since = Some(Instant::now());
        }
        h.count += 1;
        ReadMode::OnePass
    }

    /// Ends a read started with `mode`. Returns false if the lease may have been revoked while
    /// the read ran (a writer waited out the break time): the bytes read from the map then
    /// prove nothing, and the caller reads again through the private copy.
    pub fn end(&self, mode: ReadMode) -> bool {
        if mode == ReadMode::Copy {
            return true;
        }
        let mut h = self.state.lock().unwrap_or_else(|e| e.into_inner());
        // A pending break also reads as "not held", but the writer is still waiting then: the
        // lease protected the whole read if it is intact or younger than the break time.
        let protected = sys::held(self.fd)
            || h.since
                .is_some_and(|t| t.elapsed() + Duration::from_secs(1) < break_time());
        h.count -= 1;
        if h.count == 0 {
            sys::release(self.fd);
            h.since = None;
        }
        protected
    }
}

/// Leases are a Linux (and Android) facility; elsewhere every read takes the private copy.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod sys {
    use std::os::fd::RawFd;

    /// File systems whose data only changes through this kernel's VFS, where a lease covers
    /// every writer. Network and FUSE file systems can change the bytes behind its back.
    pub fn local_file_system(fd: RawFd) -> bool {
        const EXT4: i64 = 0xEF53;
        const XFS: i64 = 0x5846_5342;
        const BTRFS: i64 = 0x9123_683E;
        const TMPFS: i64 = 0x0102_1994;
        const F2FS: i64 = 0xF2F5_2010;
        // SAFETY: `statfs` is plain data; all zeros is a valid value to be overwritten.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is an open descriptor owned by the caller; `st` is writable.
        if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
            return false;
        }
        #[allow(clippy::unnecessary_cast)] // f_type is i64 on some targets, u32/i32 on others
        let kind = st.f_type as i64;
        matches!(kind, EXT4 | XFS | BTRFS | TMPFS | F2FS)
    }

    pub fn take(fd: RawFd) -> bool {
        // <fcntl.h>'s F_SETSIG (Linux), which the libc crate does not export.
        const F_SETSIG: libc::c_int = 10;
        // SAFETY: fcntl on a descriptor the caller keeps open, with integer arguments only.
        // Taking a lease makes this process the descriptor's owner, so a lease break would
        // send SIGIO (whose default action kills the process): the notification signal is
        // first set to SIGURG (ignored by default), and the owner is then cleared, so that
        // no signal is sent at all. The lease needs no signal: the reader checks it at the end.
        unsafe {
            if libc::fcntl(fd, F_SETSIG, libc::SIGURG) != 0 {
                return false;
            }
            if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) != 0 {
                return false;
            }
            libc::fcntl(fd, libc::F_SETOWN, 0);
        }
        true
    }

    pub fn held(fd: RawFd) -> bool {
        // SAFETY: F_GETLEASE on a descriptor the caller keeps open.
        unsafe { libc::fcntl(fd, libc::F_GETLEASE) == libc::F_RDLCK }
    }

    pub fn release(fd: RawFd) {
        // SAFETY: as above; releasing lets a waiting writer proceed.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod sys {
    use std::os::fd::RawFd;

    pub fn local_file_system(_fd: RawFd) -> bool {
        false
    }
    pub fn take(_fd: RawFd) -> bool {
        false
    }
    pub fn held(_fd: RawFd) -> bool {
        false
    }
    pub fn release(_fd: RawFd) {}
}
