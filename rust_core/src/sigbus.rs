//! Turning SIGBUS from a mapped file that shrank under us into a typed error.
//!
//! Reading a page of a mapping past the end of a file that another process truncated raises
//! SIGBUS, which would kill the Python process. Mapped files are registered here; a SIGBUS
//! handler that finds the faulting address inside a registered mapping replaces the rest of
//! that mapping with zero pages (so the faulting access, retried, reads zeros and fails its
//! authentication tag) and flags the mapping; the reader then reports the truncation.
//!
//! Faults anywhere else are not ours: the handler puts the previous handler (or the default
//! action) back and lets the fault happen again, so that it is handled exactly as if we had
//! never been installed. Another library may install its own handler after us (Python's
//! `faulthandler.enable()` does); [`refresh`], called before every read, notices that and
//! reinstalls ours in front of it.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Mappings protected at once (each `safe_open` handle holds one); further mappings still
/// work, unprotected. The handler scans them linearly, only when SIGBUS arrives.
const SLOTS: usize = 4096;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicUsize = AtomicUsize::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const CLEAR: AtomicBool = AtomicBool::new(false);
static STARTS: [AtomicUsize; SLOTS] = [ZERO; SLOTS];
static ENDS: [AtomicUsize; SLOTS] = [ZERO; SLOTS];
static HIT: [AtomicBool; SLOTS] = [CLEAR; SLOTS];
static USED: [AtomicBool; SLOTS] = [CLEAR; SLOTS];
/// The handler that was in place before ours (leaked, never freed: the signal handler may be
/// reading an old one). Null until ours is first installed.
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
/// Serialises (re)installation; the signal handler never takes it.
static INSTALL: Mutex<()> = Mutex::new(());

/// The page size. Plain `sysconf` (no lazy static): the SIGBUS handler calls it too.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

fn our_handler() -> usize {
    on_sigbus as *const () as usize
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    for i in 0..SLOTS {
        let start = STARTS[i].load(Ordering::Acquire);
        let end = ENDS[i].load(Ordering::Acquire);
        if start < end && (start..end).contains(&addr) {
            let page = addr & !(page_size() - 1);
            // SAFETY: [page, end) lies inside a live mapping that this crate owns (registered
            // until just before it is unmapped); replacing it with anonymous zero pages is what
            // MAP_FIXED does. mmap is async-signal-safe on Linux (a plain system call).
            let r = unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    end - page,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if r != libc::MAP_FAILED {
                HIT[i].store(true, Ordering::Release);
                return;
            }
        }
    }
    // Not ours: put back what was there before us, then let the signal arrive again.
    let prev = PREVIOUS.load(Ordering::Acquire);
    // SAFETY: `prev` is null or a leaked, never-freed sigaction; sigaction and raise are
    // async-signal-safe.
    unsafe {
        if prev.is_null() {
            libc::signal(sig, libc::SIG_DFL);
        } else {
            libc::sigaction(sig, prev, std::ptr::null_mut());
        }
        if code <= 0 {
            // Sent by kill/raise (si_code SI_USER, SI_TKILL, ...): returning would lose it.
            libc::raise(sig);
        }
        // A real fault: returning re-executes the access, which faults again.
    }
}

/// Installs our handler if it is not the one in place, keeping the current one as the
/// previous handler. Cheap (one `sigaction` query); called before every read of a map.
pub fn refresh() -> bool {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: sigaction with valid pointers to zero-initialised structs.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut current) != 0 {
            return false;
        }
        if current.sa_sigaction == our_handler() {
            return true;
        }
        PREVIOUS.store(Box::into_raw(Box::new(current)), Ordering::Release);
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = our_handler();
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) == 0
    }
}

/// A registered mapping. Drop it before unmapping.
pub struct Guard {
    slot: Option<usize>,
}

impl Guard {
    /// Registers `[ptr, ptr + len)`; returns an inert guard if every slot is taken.
    pub fn register(ptr: *const u8, len: usize) -> Guard {
        if len == 0 || !refresh() {
            return Guard { slot: None };
        }
        let start = ptr as usize;
        for i in 0..SLOTS {
            if USED[i]
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                HIT[i].store(false, Ordering::Release);
                // START before END: the handler ignores a slot until start < end.
                STARTS[i].store(start, Ordering::Release);
                ENDS[i].store(start + len, Ordering::Release);
                return Guard { slot: Some(i) };
            }
        }
        Guard { slot: None }
    }

    /// True if the mapping is registered (a read past the end of the file is caught).
    pub fn protected(&self) -> bool {
        self.slot.is_some()
    }

    /// True once a read of the mapping hit a page past the end of the file.
    pub fn truncated(&self) -> bool {
        self.slot.is_some_and(|i| HIT[i].load(Ordering::Acquire))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            ENDS[i].store(0, Ordering::Release);
            STARTS[i].store(0, Ordering::Release);
            USED[i].store(false, Ordering::Release);
        }
    }
}
