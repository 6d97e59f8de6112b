//! The `costguard` command, run as a user runs it: exit codes, stdout, stderr and files written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

fn costguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_costguard"))
        .args(args)
        .output()
        .expect("the costguard binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("stderr is UTF-8")
}

/// A fresh directory for one test's files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "costguard-cli-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn example_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml")
}

/// Runs `check` on `contents` and returns stderr, asserting exit status 1 and an empty stdout.
fn check_fails(contents: &str) -> (String, String) {
    let dir = Scratch::new();
    let path = dir.file("policy.toml", contents);
    let out = costguard(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    (stderr(&out), path.display().to_string())
}

const VALID_START: &str = "[dimensions]\nfile_lookups = \"counter\"\n\n[classes.parse]\n";

#[test]
fn check_names_the_line_of_an_unknown_key() {
    let (err, path) = check_fails(&format!("{VALID_START}wall_time = \"30s\"\nbogus = 1\n"));
    assert!(
        err.contains(&format!(
            "{path}:6:1: classes.parse.bogus: unknown key `bogus`"
        )),
        "{err}"
    );
}

#[test]
fn check_names_the_line_of_a_bad_unit() {
    let (err, path) = check_fails(&format!("{VALID_START}wall_time = \"30 seconds\"\n"));
    assert!(
        err.contains(&format!(
            "{path}:5:13: classes.parse.wall_time: unknown or missing unit"
        )),
        "{err}"
    );
}

#[test]
fn check_names_the_line_of_a_negative_number() {
    let (err, path) = check_fails(&format!(
        "{VALID_START}wall_time = \"30s\"\nlimits = {{ file_lookups = -5 }}\n"
    ));
    assert!(
        err.contains(&format!(
            "{path}:6:27: classes.parse.limits.file_lookups: must not be negative"
        )),
        "{err}"
    );
}

#[test]
fn check_names_the_line_of_a_toml_syntax_error() {
    let (err, path) = check_fails("[dimensions]\nfile_lookups = \"counter\"\n\n[classes.parse\n");
    assert!(err.contains(&format!("{path}:4:")), "{err}");
    assert!(err.contains("invalid TOML"), "{err}");
}

#[test]
fn check_reports_every_problem_at_once() {
    let (err, path) = check_fails(&format!(
        "{VALID_START}wall_time = \"30 seconds\"\nlimits = {{ file_lookups = -5 }}\nbogus = 1\n"
    ));
    for line in 5..=7 {
        assert!(
            err.contains(&format!("{path}:{line}:")),
            "line {line}: {err}"
        );
    }
    assert!(err.contains("is not a valid policy (3 problems)"), "{err}");
}

/// A problem of the whole file has no line or column, but still names the file it is in.
#[test]
fn check_names_the_file_of_a_problem_without_a_position() {
    for contents in ["[dimensions]\nq = \"counter\"\n", ""] {
        let (err, path) = check_fails(contents);
        assert!(
            err.lines()
                .any(|l| l == format!("{path}: classes: a policy needs at least one class")),
            "{contents:?}: {err}"
        );
    }
}

#[test]
fn check_of_a_missing_file_fails_cleanly() {
    let dir = Scratch::new();
    let path = dir.path("absent.toml");
    let out = costguard(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read policy file"),
        "{}",
        stderr(&out)
    );
    // The file is named once, not once more in front of the problem that already names it.
    let named = format!("{}: ", path.display());
    assert!(
        !stderr(&out).contains(&format!("{named}{named}")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_of_a_policy_without_dimensions_says_it_has_no_limits() {
    let dir = Scratch::new();
    let path = dir.file("policy.toml", "[classes.app]\nwall_time = \"1s\"\n");
    let out = costguard(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "  limits                   none (the policy declares no dimensions)\n  admission"
        ),
        "{text}"
    );
}

/// `check` shows an adaptive limit as the engine runs it: a `min` too low to leave every priority
/// with a share a permit is shown raised, and said to be.
#[test]
fn check_shows_an_adaptive_limit_as_the_engine_runs_it() {
    let dir = Scratch::new();
    let path = dir.file(
        "policy.toml",
        "[classes.api]\nwall_time = \"1s\"\n[classes.api.admission]\nconcurrency = { algorithm = \"aimd\", initial = 1, min = 1, max = 12, latency_threshold = \"100ms\" }\n",
    );
    let out = costguard(&["check", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("from 2 to 12, starting at 2, every 1s (min 1 raised to 2: every priority with a share keeps a permit)"),
        "{text}"
    );
}

#[test]
fn check_of_the_example_policy_shows_its_limits() {
    let out = costguard(&["check", example_policy().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "a valid policy: 7 dimensions, 3 classes, 1 pool, 2 backends",
        "class parse",
        "wall_time                30s",
        "cpu_time                 20s",
        "child_margin             250ms",
        "file_lookups           500",
        "output_bytes           2MiB",
        "gradient2",
        "sheddable 60%, background 25%",
        "64 waiting, at most 100ms each",
        "shadow                 yes",
        "pool db_in_flight",
        "backend kafka",
        "kafka1012:9092, kafka1013:9092, kafka1014:9092",
        "max_connecting           16 (2 per host)",
        "at most 34% of hosts",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["replay", "--seed", "twelve"],
        &["check"],
        &["replay", "--no-such-flag"],
    ] {
        let out = costguard(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn replay_of_an_unknown_scenario_says_so() {
    let out = costguard(&["replay", "no-such-outage"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(stdout(&out).is_empty());
    let err = stderr(&out);
    assert!(err.contains("no scenario named `no-such-outage`"), "{err}");
    for s in costguard_cli::scenarios() {
        assert!(err.contains(s.name), "{err}");
    }
}

#[test]
fn replay_with_an_invalid_policy_prints_its_errors() {
    let dir = Scratch::new();
    let path = dir.file("policy.toml", &format!("{VALID_START}wall_time = \"0s\"\n"));
    let name = costguard_cli::scenarios()
        .first()
        .map_or("commons-2015", |s| s.name);
    let out = costguard(&["replay", name, "--policy", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:5:", path.display())), "{err}");
}

/// Messages to a stderr nobody reads (a pipe whose reader has gone) change no exit code: a
/// failed write there must not turn into a panic.
#[test]
fn a_closed_stderr_changes_no_exit_code() {
    let dir = Scratch::new();
    let invalid = dir.file("policy.toml", &format!("{VALID_START}wall_time = \"0s\"\n"));
    let chart = dir.path("chart.svg");
    let name = costguard_cli::scenarios()
        .first()
        .map_or("commons-2015", |s| s.name);
    let cases: [(Vec<&str>, i32); 3] = [
        (vec!["check", invalid.to_str().unwrap()], 1),
        (vec!["replay", "no-such-scenario"], 2),
        (vec!["replay", name, "--plot", chart.to_str().unwrap()], 0),
    ];
    for (args, code) in cases {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let status = Command::new(env!("CARGO_BIN_EXE_costguard"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(writer)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(code), "{args:?}");
    }
}

// The tests below need the simulator: they replay the built-in scenarios.

/// Every door of the replay is a `try_admit`, which never waits, and simulated requests spend no
/// CPU time and carry no key: a policy's queue, CPU time limit and per-key limits change nothing,
/// and the user is told so rather than left to wonder.
#[test]
fn replay_says_which_settings_it_does_not_use() {
    let dir = Scratch::new();
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/kafka-2016.toml");
    let toml = std::fs::read_to_string(own).unwrap();
    let notes = [
        "class app: the replay admits with try_admit, which never waits; its queue is not used",
        "class app: simulated requests spend no CPU time; its cpu_time is not used",
        "class app: simulated requests carry no key; its per_key limits are not used",
    ];
    let unused = toml
        .replacen(
            "concurrency = 50",
            "concurrency = 50\nqueue = { capacity = 64, max_wait = \"100ms\" }\nper_key = { concurrency = 1, max_keys = 16 }",
            1,
        )
        .replacen("retries      = 1", "retries      = 1\ncpu_time     = \"1ns\"", 1);
    assert_eq!(unused.lines().count(), toml.lines().count() + 3);
    let path = dir.file("unused.toml", &unused);
    let out = costguard(&["replay", "kafka-2016", "--policy", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for note in notes {
        assert!(stderr(&out).contains(note), "{note}: {}", stderr(&out));
    }
    let plain = costguard(&["replay", "kafka-2016"]);
    assert!(!stderr(&plain).contains("not used"), "{}", stderr(&plain));
}

fn scenario_names() -> Vec<&'static str> {
    let names: Vec<&str> = costguard_cli::scenarios().iter().map(|s| s.name).collect();
    assert!(!names.is_empty(), "no built-in scenarios");
    names
}

fn incident_names() -> Vec<&'static str> {
    costguard_cli::scenarios()
        .iter()
        .filter(|s| s.incident)
        .map(|s| s.name)
        .collect()
}

#[test]
fn scenarios_lists_every_scenario_and_marks_the_incidents() {
    let out = costguard(&["scenarios"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for s in costguard_cli::scenarios() {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(usize::from(s.incident)) == Some(s.name))
            .unwrap_or_else(|| panic!("{} missing from\n{text}", s.name));
        assert!(line.contains(s.summary), "{line}");
        assert_eq!(line.starts_with('*'), s.incident, "{line}");
    }
    assert!(!scenario_names().is_empty());
    assert_eq!(incident_names().len(), 2, "the 2015 and 2016 incidents");
}

const RUN_KEYS: [&str; 9] = [
    "amplification",
    "db_queries",
    "peak_db_queue",
    "max_threads_busy",
    "max_threads_stuck",
    "goodput_unaffected",
    "errors_per_minute",
    "recovery_seconds",
    "refusals",
];

fn assert_comparison(v: &serde_json::Value, scenario: &str) {
    assert_eq!(v["scenario"], scenario);
    for run in ["unguarded", "guarded"] {
        let r = &v[run];
        assert!(r.is_object(), "{run} missing: {v}");
        for key in RUN_KEYS {
            assert!(r.get(key).is_some(), "{scenario} {run}.{key} missing");
        }
        assert!(r["amplification"].is_number());
        assert!(r["db_queries"].is_u64());
        assert!(r["peak_db_queue"].is_u64());
        assert!(r["max_threads_busy"].is_u64());
        assert!(r["max_threads_stuck"].is_u64());
        let goodput = r["goodput_unaffected"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&goodput), "{goodput}");
        let errors = r["errors_per_minute"].as_array().unwrap();
        assert!(!errors.is_empty() && errors.iter().all(|e| e.is_u64()));
        assert!(r["recovery_seconds"].is_null() || r["recovery_seconds"].is_number());
        let refusals = r["refusals"].as_object().unwrap();
        assert!(refusals.values().all(|n| n.is_u64()));
    }
}

#[test]
fn replay_json_has_both_runs_with_every_key() {
    for name in scenario_names() {
        let out = costguard(&["replay", name, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
        assert_comparison(&v, name);
        // Only the guarded run is refused anything.
        assert!(v["unguarded"]["refusals"].as_object().unwrap().is_empty());
    }
}

/// The cheapest scenario to replay: the first one that is not an incident, if any.
fn quick_scenario() -> &'static str {
    costguard_cli::scenarios()
        .iter()
        .find(|s| !s.incident)
        .map_or_else(|| scenario_names()[0], |s| s.name)
}

#[test]
fn replay_without_a_name_runs_both_incidents_the_same_way_twice() {
    let incidents = incident_names();
    let dir = Scratch::new();
    let plot = dir.path("out.svg");
    let json = costguard(&[
        "replay",
        "--seed",
        "42",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let all = v.as_array().expect("an array, one object per incident");
    assert_eq!(all.len(), incidents.len());
    for (v, name) in all.iter().zip(&incidents) {
        assert_comparison(v, name);
        assert_eq!(v["seed"], 42);
    }

    // With several scenarios, one chart each, named after the scenario.
    for name in &incidents {
        let file = dir.path(&format!("out-{name}.svg"));
        let svg =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(svg.contains(name) && svg.trim_end().ends_with("</svg>"));
        assert!(stderr(&json).contains(&file.display().to_string()));
    }
    assert!(!plot.exists());

    // The same seed gives the same bytes: JSON and table.
    let again = costguard(&["replay", "--seed", "42", "--json"]);
    assert_eq!(json.stdout, again.stdout);
    let table = costguard(&["replay", "--seed", "42"]);
    assert_eq!(table.status.code(), Some(0), "{}", stderr(&table));
    assert_eq!(table.stdout, costguard(&["replay", "--seed", "42"]).stdout);
    let table = stdout(&table);
    for name in &incidents {
        assert!(table.contains(name), "{name} missing from\n{table}");
    }
}

#[test]
fn the_seed_is_the_one_reported_and_the_same_seed_prints_the_same_bytes() {
    let name = quick_scenario();
    let json = costguard(&["replay", name, "--seed", "7", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["seed"], 7);
    assert_eq!(
        json.stdout,
        costguard(&["replay", name, "--seed", "7", "--json"]).stdout
    );
    let table = costguard(&["replay", name, "--seed", "7"]);
    assert_eq!(
        table.stdout,
        costguard(&["replay", name, "--seed", "7"]).stdout
    );
    assert!(stdout(&table).contains("seed 7,"), "{}", stdout(&table));
}

#[test]
fn the_table_shows_every_metric_for_both_runs() {
    let name = quick_scenario();
    let out = costguard(&["replay", name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    for needle in [
        "unguarded",
        "guarded",
        "amplification",
        "DB queries",
        "peak DB queue",
        "threads busy",
        "threads stuck",
        "goodput for unaffected users",
        "5xx per minute",
        "time to recover",
        "refusals by reason",
        "events",
    ] {
        assert!(table.contains(needle), "{needle:?} missing from\n{table}");
    }
    // Nothing but the table on stdout: no progress bar, no chart message.
    assert!(!table.contains('\r') && !table.contains('\u{1b}'));
}

#[test]
fn plot_writes_an_svg_with_both_runs() {
    let dir = Scratch::new();
    let name = quick_scenario();
    let path = dir.path("chart.svg");
    let out = costguard(&["replay", name, "--plot", path.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("stdout is still only JSON");
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains(name));
    assert!(svg.contains("5xx responses per minute"));
    assert!(svg.contains("worker threads"));
    for run in ["unguarded", "guarded"] {
        assert!(svg.contains(&format!(">{run} (")), "{run} legend missing");
    }
    // An error curve (area and line) per run, busy and stuck lines per run.
    assert_eq!(svg.matches("<polygon").count(), 2);
    assert_eq!(svg.matches("<polyline").count(), 6);
}

/// `--plot` given a directory (one that exists, or any path ending in a separator) writes each
/// scenario's chart into it, named after the scenario, whether one scenario runs or several.
#[test]
fn plot_into_a_directory_writes_one_chart_per_scenario_inside_it() {
    let dir = Scratch::new();
    let name = quick_scenario();
    let existing = dir.path("existing");
    std::fs::create_dir(&existing).unwrap();
    let with_slash = format!(
        "{}{}",
        dir.path("slash").display(),
        std::path::MAIN_SEPARATOR
    );
    std::fs::create_dir(dir.path("slash")).unwrap();
    for plot in [existing.display().to_string(), with_slash] {
        let out = costguard(&["replay", name, "--plot", &plot]);
        assert_eq!(out.status.code(), Some(0), "{plot}: {}", stderr(&out));
        let file = Path::new(&plot).join(format!("{name}.svg"));
        let svg =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(svg.contains(name) && svg.trim_end().ends_with("</svg>"));
    }

    let several = dir.path("several");
    std::fs::create_dir(&several).unwrap();
    let out = costguard(&["replay", "--plot", several.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for name in incident_names() {
        assert!(several.join(format!("{name}.svg")).is_file(), "{name}");
    }
    // Nothing written beside the directory.
    let beside: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !["existing", "slash", "several"].contains(&n.to_str().unwrap()))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
}

/// A chart that cannot be written fails the command before any table is printed: the output is
/// either whole or absent, not the first scenario's followed by an error.
#[test]
fn a_chart_that_cannot_be_written_fails_before_any_output() {
    let incidents = incident_names();
    assert!(incidents.len() > 1, "needs several charts");
    let dir = Scratch::new();
    let plot = dir.path("out.svg");
    // The last scenario's chart path is taken by a directory.
    let last = dir.path(&format!("out-{}.svg", incidents[incidents.len() - 1]));
    std::fs::create_dir(&last).unwrap();
    let out = costguard(&["replay", "--plot", plot.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "printed: {}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!("cannot write the chart to {}", last.display())),
        "{}",
        stderr(&out)
    );
}

/// The example policy is written for a gallery service, not for the incidents: a replay under it
/// runs if the policy suits the scenario, and otherwise fails saying what it lacks, as
/// `check_policy` finds it, before running anything.
#[test]
fn replay_under_the_example_policy_runs_or_says_what_it_lacks() {
    let path = example_policy();
    let policy = costguard::Policy::from_toml_file(&path).unwrap();
    for name in scenario_names() {
        let out = costguard(&["replay", name, "--policy", path.to_str().unwrap()]);
        match costguard_cli::check_policy(name, &policy) {
            Ok(()) => {
                assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
                assert!(stdout(&out).contains("guarded"));
            }
            Err(lacks) => {
                assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
                assert!(out.stdout.is_empty(), "{name}: {}", stdout(&out));
                let said = format!("costguard: {name}: {lacks}");
                assert!(stderr(&out).contains(&said), "{said}: {}", stderr(&out));
            }
        }
    }
}

/// A policy that cannot guard one of the scenarios to run fails the command before any of them runs:
/// nothing on stdout, no chart written, and the scenario it cannot guard named.
#[test]
fn replay_of_several_scenarios_checks_the_policy_against_each_before_running_any() {
    let incidents = incident_names();
    assert!(incidents.len() > 1);
    let dir = Scratch::new();
    // The first incident's own policy, which lacks what the others need.
    let policy = dir.file(
        "policy.toml",
        costguard_cli::default_policy(incidents[0]).unwrap(),
    );
    let plot = dir.path("out.svg");
    let out = costguard(&[
        "replay",
        "--policy",
        policy.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the policy cannot guard this scenario"),
        "{err}"
    );
    assert!(err.contains(incidents[1]), "{err}");
    assert!(!err.contains("chart written"), "{err}");
    let written: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "policy.toml")
        .collect();
    assert!(written.is_empty(), "{written:?}");
}

#[test]
fn replay_under_a_policy_file_equal_to_the_default_gives_the_default_result() {
    let name = quick_scenario();
    let dir = Scratch::new();
    let path = dir.file(
        "policy.toml",
        costguard_cli::default_policy(name).expect("every scenario has a default policy"),
    );
    let check = costguard(&["check", path.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    let given = costguard(&["replay", name, "--json", "--policy", path.to_str().unwrap()]);
    assert_eq!(given.status.code(), Some(0), "{}", stderr(&given));
    let default = costguard(&["replay", name, "--json"]);
    assert_eq!(given.stdout, default.stdout);
}
