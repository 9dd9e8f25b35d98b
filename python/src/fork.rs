//! [`PerProcess`]: a value each process builds for itself, so that a child
//! made by `os.fork()` never touches what its parent built.
//!
//! A forked child holds a copy of its parent's memory but only the thread
//! that forked: the parent's tokio worker threads are gone, a lock another
//! parent thread held at that moment stays held forever, and a kept-alive
//! connection is a socket both processes now read. So a tokio runtime, a
//! wasmtime engine and a credential's sandboxes are each kept per process:
//! the child sees the value is not its own process's and builds its own,
//! without taking any lock. The parent's copy is never used nor dropped in
//! the child (dropping a runtime would wait for threads that do not exist
//! there); it is left as memory the child does not look at.
//!
//! A process is its pid and its fork generation: a `pthread_atfork` handler
//! counts forks in each child, so a descendant that is given a pid an
//! ancestor once had (after the ancestor exited) still sees the value is not
//! its own.

use std::ptr::null_mut;
use std::sync::Once;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// Forks this process descends through (counted in each child).
static GENERATION: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// Count forks from now on: call once before anything is built.
pub(crate) fn count_forks() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: `forked` only touches an atomic, as a child handler may.
        unsafe { libc::pthread_atfork(None, None, Some(forked)) };
    });
}

/// This process: its pid and fork generation.
fn this_process() -> (u32, u64) {
    (std::process::id(), GENERATION.load(Ordering::Relaxed))
}

/// A value owned by the process that built it. Lock-free: `get_or_try_init`
/// is a load, a `getpid` and a compare, and in a new process one
/// compare-and-swap.
pub(crate) struct PerProcess<T> {
    current: AtomicPtr<Owned<T>>,
}

struct Owned<T> {
    process: (u32, u64),
    value: T,
}

impl<T> PerProcess<T> {
    /// Nothing built yet.
    pub(crate) const fn new() -> Self {
        PerProcess {
            current: AtomicPtr::new(null_mut()),
        }
    }

    /// Holding `value`, built by this process.
    pub(crate) fn with(value: T) -> Self {
        let owned = Box::new(Owned {
            process: this_process(),
            value,
        });
        PerProcess {
            current: AtomicPtr::new(Box::into_raw(owned)),
        }
    }

    /// This process's value, if it has built one.
    pub(crate) fn get(&self) -> Option<&T> {
        let current = self.current.load(Ordering::Acquire);
        // SAFETY: a non-null pointer is a leaked `Box<Owned<T>>` that is only
        // freed by `Drop` (which has `&mut self`), so it outlives `&self`.
        let owned = unsafe { current.as_ref() }?;
        (owned.process == this_process()).then_some(&owned.value)
    }

    /// This process's value, built by `init` if this process has none yet
    /// (the first use, or the first in a forked child); `init` is told
    /// whether an ancestor had built one. Two threads racing here may both
    /// build; one value wins and the other is dropped unused.
    pub(crate) fn get_or_try_init<E>(
        &self,
        init: impl FnOnce(bool) -> Result<T, E>,
    ) -> Result<&T, E> {
        let seen = self.current.load(Ordering::Acquire);
        // SAFETY: as in `get`.
        let inherited = match unsafe { seen.as_ref() } {
            Some(owned) if owned.process == this_process() => return Ok(&owned.value),
            Some(_) => true,
            None => false,
        };
        let built = Box::into_raw(Box::new(Owned {
            process: this_process(),
            value: init(inherited)?,
        }));
        match self
            .current
            .compare_exchange(seen, built, Ordering::AcqRel, Ordering::Acquire)
        {
            // The value `seen` (another process's, or none) is left alone.
            // SAFETY: `built` is now the current value, freed only by `Drop`.
            Ok(_) => Ok(unsafe { &(*built).value }),
            Err(winner) => {
                // SAFETY: `built` was never shared; `winner` was built by
                // this process (only its threads replace another's value)
                // and is freed only by `Drop`.
                drop(unsafe { Box::from_raw(built) });
                Ok(unsafe { &(*winner).value })
            }
        }
    }
}

impl<T> Drop for PerProcess<T> {
    fn drop(&mut self) {
        let current = *self.current.get_mut();
        // SAFETY: see `get`; only this process's own value is dropped.
        if let Some(owned) = unsafe { current.as_ref() }
            && owned.process == this_process()
        {
            drop(unsafe { Box::from_raw(current) });
        }
    }
}

// SAFETY: a `PerProcess<T>` hands out `&T` to any thread and drops `T` on
// whichever thread drops it, as an `Arc<T>` would.
unsafe impl<T: Send + Sync> Send for PerProcess<T> {}
unsafe impl<T: Send + Sync> Sync for PerProcess<T> {}
