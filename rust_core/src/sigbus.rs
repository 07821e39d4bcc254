//! Turning SIGBUS from a mapped file that shrank under us into a typed error.
//!
//! Reading a page of a mapping past the end of a file that another process truncated raises
//! SIGBUS, which would kill the Python process. Mapped files are registered here; a SIGBUS
//! handler that finds the faulting address inside a registered mapping replaces the rest of
//! that mapping with zero pages (so the faulting access, retried, reads zeros and fails its
//! authentication tag) and flags the mapping; the reader then reports the truncation. Faults
//! anywhere else go to the previous handler, or to the default action.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

/// Mappings protected at once; further mappings work, unprotected.
const SLOTS: usize = 128;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicUsize = AtomicUsize::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const CLEAR: AtomicBool = AtomicBool::new(false);
static STARTS: [AtomicUsize; SLOTS] = [ZERO; SLOTS];
static ENDS: [AtomicUsize; SLOTS] = [ZERO; SLOTS];
static HIT: [AtomicBool; SLOTS] = [CLEAR; SLOTS];
static USED: [AtomicBool; SLOTS] = [CLEAR; SLOTS];
static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// The handler that was in place before ours; written once, before ours is installed.
static mut PREVIOUS: MaybeUninit<libc::sigaction> = MaybeUninit::uninit();

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

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
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
    // Not ours: behave as if we were never installed.
    // SAFETY: PREVIOUS was initialised before this handler was installed and is never written
    // again; calling the previous handler with the same arguments is how chaining works.
    unsafe {
        let prev = (*std::ptr::addr_of!(PREVIOUS)).assume_init_ref();
        let h = prev.sa_sigaction;
        if h == libc::SIG_DFL || h == libc::SIG_IGN {
            // Restore the default action; returning re-executes the access, which faults again.
            libc::signal(sig, libc::SIG_DFL);
        } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(h);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(h);
            f(sig);
        }
    }
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: plain sigaction calls on zero-initialised structs; PREVIOUS is written here,
        // once, before our handler can run.
        unsafe {
            let mut prev: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut prev) != 0 {
                return;
            }
            (*std::ptr::addr_of_mut!(PREVIOUS)).write(prev);
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_sigbus as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) == 0 {
                INSTALLED.store(true, Ordering::Release);
            }
        }
    });
}

/// A registered mapping. Drop it before unmapping.
pub struct Guard {
    slot: Option<usize>,
}

impl Guard {
    /// Registers `[ptr, ptr + len)`; returns an inert guard if every slot is taken.
    pub fn register(ptr: *const u8, len: usize) -> Guard {
        install();
        if !INSTALLED.load(Ordering::Acquire) || len == 0 {
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
