//! The threading primitives of group commit ([`crate::sync::GroupCommit`]) and of the
//! consumers' wake-ups ([`crate::notify::Notify`]). In every normal build they are std's and
//! rustix's own items, re-exported: nothing changes and nothing costs more. In the unit
//! tests built with `RUSTFLAGS="--cfg loom"` (loom is a dev-dependency) they come from loom,
//! or from simulations built on loom's, so that loom can run those protocols through every
//! interleaving of their threads (docs/RELIABILITY.md, section 6). Only this module knows
//! the difference.

#[cfg(not(all(loom, test)))]
pub(crate) use rustix::thread::futex;
#[cfg(not(all(loom, test)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(not(all(loom, test)))]
pub(crate) use std::sync::{Condvar, Mutex};
#[cfg(not(all(loom, test)))]
pub(crate) use std::thread::yield_now;
#[cfg(not(all(loom, test)))]
pub(crate) use std::time::Instant;

#[cfg(all(loom, test))]
pub(crate) use loom::sync::{Condvar, Mutex};
#[cfg(all(loom, test))]
pub(crate) use model::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Instant, futex, yield_now};

#[cfg(all(loom, test))]
pub(crate) use model::{advance_clock, check};

#[cfg(all(loom, test))]
mod model {
    use std::sync::atomic::Ordering::{self, SeqCst};
    use std::time::Duration;

    use loom::sync::atomic::fence;

    // Loom runs `SeqCst` accesses as `AcqRel` ones (its README; loom issue #180), and would
    // report lost wake-ups that the single total order of `SeqCst` accesses rules out, as in
    // `Notify`. So each `SeqCst` access here also has a `SeqCst` fence on either side, which
    // loom does model: of two such accesses in different threads, at least one sees the
    // other. Other orderings go to loom untouched, and group commit uses no `SeqCst`.
    fn seq_cst<R>(order: Ordering, access: impl FnOnce() -> R) -> R {
        if order != SeqCst {
            return access();
        }
        fence(SeqCst);
        let result = access();
        fence(SeqCst);
        result
    }

    // Each type has the methods any of them needs.
    macro_rules! atomic_int {
        ($name:ident, $int:ty) => {
            #[derive(Debug, Default)]
            pub(crate) struct $name(loom::sync::atomic::$name);

            #[allow(dead_code)]
            impl $name {
                pub(crate) fn new(value: $int) -> $name {
                    $name(loom::sync::atomic::$name::new(value))
                }

                pub(crate) fn load(&self, order: Ordering) -> $int {
                    seq_cst(order, || self.0.load(order))
                }

                pub(crate) fn store(&self, value: $int, order: Ordering) {
                    seq_cst(order, || self.0.store(value, order))
                }

                pub(crate) fn fetch_add(&self, value: $int, order: Ordering) -> $int {
                    seq_cst(order, || self.0.fetch_add(value, order))
                }

                pub(crate) fn fetch_sub(&self, value: $int, order: Ordering) -> $int {
                    seq_cst(order, || self.0.fetch_sub(value, order))
                }

                pub(crate) fn fetch_max(&self, value: $int, order: Ordering) -> $int {
                    seq_cst(order, || self.0.fetch_max(value, order))
                }

                pub(crate) fn compare_exchange(
                    &self,
                    current: $int,
                    new: $int,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$int, $int> {
                    seq_cst(success, || self.0.compare_exchange(current, new, success, failure))
                }
            }
        };
    }

    atomic_int!(AtomicU32, u32);
    atomic_int!(AtomicU64, u64);
    atomic_int!(AtomicUsize, usize);

    #[derive(Debug, Default)]
    pub(crate) struct AtomicBool(loom::sync::atomic::AtomicBool);

    impl AtomicBool {
        pub(crate) fn new(value: bool) -> AtomicBool {
            AtomicBool(loom::sync::atomic::AtomicBool::new(value))
        }

        pub(crate) fn load(&self, order: Ordering) -> bool {
            seq_cst(order, || self.0.load(order))
        }

        pub(crate) fn store(&self, value: bool, order: Ordering) {
            seq_cst(order, || self.0.store(value, order))
        }

        pub(crate) fn compare_exchange(
            &self,
            current: bool,
            new: bool,
            success: Ordering,
            failure: Ordering,
        ) -> Result<bool, bool> {
            seq_cst(success, || self.0.compare_exchange(current, new, success, failure))
        }
    }

    /// Runs `model` through every interleaving of its threads that preempts a thread at
    /// most `preemptions` times (`LOOM_MAX_PREEMPTIONS` overrides): without a bound, even
    /// two threads of group commit take minutes, and three take hours.
    pub(crate) fn check(preemptions: usize, model: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound.get_or_insert(preemptions);
        builder.check(model);
    }

    // Time in a model stands still while threads compute: it moves only where a real thread
    // lets time pass, by a fixed amount, so that every run of a schedule sees the same times
    // and every loop that waits for a deadline ends. A yield takes `YIELD_TICK`, a timed wait
    // that nobody ends takes its whole timeout, and a model's sync says how long it takes
    // (`advance_clock`). Any timing is one a real run could have; loom explores the orders of
    // the threads under these timings, not every timing.
    loom::lazy_static! {
        /// Nanoseconds since the model's execution began; a new one for each execution.
        static ref CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    }

    /// What one `yield_now` costs on the simulated clock.
    const YIELD_TICK: Duration = Duration::from_micros(50);

    /// Moves the simulated clock on: a model's sync takes time this way.
    pub(crate) fn advance_clock(by: Duration) {
        CLOCK.fetch_add(by.as_nanos() as u64, SeqCst);
    }

    /// A point on the simulated clock.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub(crate) struct Instant(Duration);

    impl Instant {
        pub(crate) fn now() -> Instant {
            Instant(Duration::from_nanos(CLOCK.load(SeqCst)))
        }

        pub(crate) fn elapsed(&self) -> Duration {
            Instant::now().saturating_duration_since(*self)
        }

        pub(crate) fn saturating_duration_since(&self, earlier: Instant) -> Duration {
            self.0.saturating_sub(earlier.0)
        }
    }

    impl std::ops::Add<Duration> for Instant {
        type Output = Instant;

        fn add(self, by: Duration) -> Instant {
            Instant(self.0 + by)
        }
    }

    /// Lets the other threads run (without using one of loom's bounded preemptions), and
    /// takes `YIELD_TICK`, so that a loop that yields until a deadline ends.
    pub(crate) fn yield_now() {
        loom::thread::yield_now();
        advance_clock(YIELD_TICK);
    }

    /// A futex as a loom mutex and condition variable. Every word shares one of each, as if
    /// all hashed to the same kernel bucket, and a wake wakes every sleeper: a thread that
    /// sleeps on one word also wakes when another is woken, which stands for the spurious
    /// returns (EINTR) that callers must handle. Waking all where the code wakes one is the
    /// same kind of extra wake-up.
    pub(crate) mod futex {
        use std::sync::atomic::Ordering::SeqCst;
        use std::time::Duration;

        use loom::sync::{Condvar, Mutex};
        use rustix::io::{Errno, Result};
        use rustix::time::Timespec;

        use super::AtomicU32;

        /// Accepted and ignored, as the model has one process.
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct Flags;

        impl Flags {
            pub(crate) const PRIVATE: Flags = Flags;
        }

        loom::lazy_static! {
            static ref BUCKET: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
        }

        /// Sleeps while `word` holds `expected`, as `FUTEX_WAIT`. The word is read under the
        /// bucket's lock, and `wake` takes it: a change made before a wake is seen, or the
        /// wake finds the sleeper, as the kernel guarantees.
        ///
        /// A timed wait cannot sleep in loom, which has no clock: a sleeper that nobody wakes
        /// would be reported as a deadlock. It lets the other threads run instead; if the word
        /// changed meanwhile it returns as woken, and otherwise as timed out, with the clock
        /// moved on by the timeout. A caller that reads the clock again then finds its
        /// deadline passed, so a loop around a timed wait ends.
        pub(crate) fn wait(word: &AtomicU32, _: Flags, expected: u32, timeout: Option<&Timespec>) -> Result<()> {
            let (lock, sleepers) = &*BUCKET;
            let guard = lock.lock().unwrap();
            if word.load(SeqCst) != expected {
                return Err(Errno::AGAIN);
            }
            let Some(timeout) = timeout else {
                drop(sleepers.wait(guard).unwrap());
                return Ok(());
            };
            drop(guard);
            loom::thread::yield_now();
            if word.load(SeqCst) != expected {
                return Ok(());
            }
            super::advance_clock(Duration::new(timeout.tv_sec as u64, timeout.tv_nsec as u32));
            Err(Errno::TIMEDOUT)
        }

        /// Wakes every sleeper of every word (see the module's notes).
        pub(crate) fn wake(_: &AtomicU32, _: Flags, _: u32) -> Result<usize> {
            let (lock, sleepers) = &*BUCKET;
            let _guard = lock.lock().unwrap();
            sleepers.notify_all();
            Ok(0)
        }
    }
}
