//! What the tests share: an engine on a manual clock, a hand-driven executor for futures, clocks
//! that panic when told to, and a child process to run a test in whose failure could abort the
//! process.
//!
//! A panic escaping a destructor while another panic unwinds aborts the process, and with it the
//! whole test binary. A test of such code runs its body in a child (the same test binary, asked for
//! that one test), so that an abort fails that test and nothing else.

#![allow(dead_code)] // each test binary uses its own part

use costguard::clock::{Clock, CpuClock, ManualClock, ManualCpuClock, Timestamp};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An engine of `policy` on a manual clock, and the clock.
pub fn manual_engine(policy: costguard::Policy) -> (costguard::Engine, ManualClock) {
    let clock = ManualClock::new();
    let engine = costguard::Engine::builder(policy)
        .clock(clock.clone())
        .build()
        .unwrap();
    (engine, clock)
}

/// A manual clock and a manual CPU clock that panic while told to.
#[derive(Clone, Debug, Default)]
pub struct FailingClock {
    pub clock: ManualClock,
    pub cpu: ManualCpuClock,
    failing: Arc<AtomicBool>,
}

impl FailingClock {
    /// From now on, every reading panics (`true`) or none does (`false`).
    pub fn fail(&self, fail: bool) {
        self.failing.store(fail, Ordering::SeqCst);
    }
}

impl Clock for FailingClock {
    fn now(&self) -> Timestamp {
        assert!(!self.failing.load(Ordering::SeqCst), "the clock failed");
        self.clock.now()
    }
}

impl CpuClock for FailingClock {
    fn thread_cpu(&self) -> Option<Duration> {
        assert!(!self.failing.load(Ordering::SeqCst), "the CPU clock failed");
        self.cpu.thread_cpu()
    }
}

/// Set in the child's environment.
const CHILD: &str = "COSTGUARD_TEST_CHILD";

/// What the child prints once its body has run to the end.
const FINISHED: &str = "costguard test child: finished";

/// In the parent: runs the test named `test` (this one) again in a child process and asserts that
/// it finished, then returns `false`; the caller returns. In the child: returns `true`, and the
/// caller runs its body and ends with [`finished`].
pub fn in_child(test: &str) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A child that never ends (a waiter nothing wakes) fails the test too, after a minute.
    let pid = child.id();
    let (sender, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    let Ok(out) = outcome.recv_timeout(Duration::from_secs(60)) else {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        panic!("the child running {test} did not end within a minute");
    };
    let out = out.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains(FINISHED),
        "the child running {test}: {:?}\n{stderr}",
        out.status
    );
    false
}

/// Says, in the child, that the body ran to its end.
pub fn finished() {
    eprintln!("{FINISHED}");
}

/// Just enough of an executor to poll a future by hand.
pub mod executor {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    /// A waker that counts its wakes.
    #[derive(Default)]
    pub struct CountingWaker(pub AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls `f` once with `waker`.
    pub fn poll<F: Future + Unpin>(f: &mut F, waker: &Arc<CountingWaker>) -> Poll<F::Output> {
        let waker = Waker::from(Arc::clone(waker));
        Pin::new(f).poll(&mut Context::from_waker(&waker))
    }
}

/// One class `api` with one permit, a queue of `max_wait` (ms) and CoDel at 5 ms / 100 ms.
pub fn codel_policy(max_wait: u64) -> costguard::Policy {
    costguard::Policy::builder()
        .class("api", |c| {
            c.admission(|a| {
                a.concurrency(1)
                    .queue(64, Duration::from_millis(max_wait))
                    .codel(Duration::from_millis(5), Duration::from_millis(100))
            })
        })
        .build()
        .unwrap()
}

/// Under [`codel_policy`]`(900)` with its one permit held: waiters 150 ms apart, none served, until
/// CoDel has judged the queue standing; `advance` moves the clock. Returns the waiters still
/// queued (joined 450 to 900 ms).
pub fn standing_with_old_waiters<'e>(
    e: &'e costguard::Engine,
    advance: &dyn Fn(Duration),
) -> Vec<costguard::admission::AdmitFuture<'e, 'static>> {
    use executor::{poll, CountingWaker};
    let api = e.class("api").unwrap();
    let waker = Arc::new(CountingWaker::default());
    let mut waiters = Vec::new();
    for n in 1..=8u64 {
        let mut w = e.admit_async(costguard::AdmitRequest::new(
            api,
            costguard::RequestId::from_u64(n),
        ));
        assert!(poll(&mut w, &waker).is_pending());
        waiters.push(w);
        advance(Duration::from_millis(150));
        e.expire_waiters();
        waiters.retain_mut(|w| poll(w, &waker).is_pending());
    }
    waiters
}
