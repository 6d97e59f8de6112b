//! Tests of code that could abort the process, run in a child process of their own.
//!
//! A panic escaping a destructor while another panic unwinds aborts the process, and with it the
//! whole test binary. A test of such code runs its body in a child (the same test binary, asked for
//! that one test), so that an abort fails that test and nothing else.

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
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
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
