//! Policy files: units, strictness, and errors that name file, line and field.

use costguard::clock::ManualClock;
use costguard::{Engine, Policy, Priority};
use std::time::Duration;

fn problems(source: &str) -> Vec<String> {
    Policy::from_toml_str(source)
        .unwrap_err()
        .problems()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn the_example_policy_loads_with_units() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policy.toml");
    let policy = Policy::from_toml_file(path).unwrap();
    let parse = policy.class("parse").unwrap();
    assert_eq!(parse.wall_time(), Some(Duration::from_secs(30)));
    assert_eq!(parse.cpu_time(), Some(Duration::from_secs(20)));
    assert_eq!(parse.child_margin(), Duration::from_millis(250));
    assert_eq!(parse.retries(), Some(2));
    let limits: Vec<_> = parse.limits().collect();
    assert!(limits.contains(&("output_bytes", 2 * 1024 * 1024)));
    assert!(limits.contains(&("file_lookups", 500)));
    let upload = policy.class("upload").unwrap();
    assert_eq!(upload.wall_time(), Some(Duration::from_secs(120)));
    assert_eq!(upload.priority(), Priority::Sheddable);
    assert_eq!(upload.retries(), None);
    let engine = Engine::builder(policy.clone())
        .clock(ManualClock::new())
        .build()
        .unwrap();
    assert!(engine.level("nesting_depth").is_ok());
    // The effective limits print readably.
    let text = policy.to_string();
    assert!(text.contains("class parse (priority normal)"));
    assert!(text.contains("2.0MiB"));
}

#[test]
fn errors_name_the_file_line_and_field() {
    let dir = env!("CARGO_TARGET_TMPDIR");
    let path = std::path::Path::new(dir).join("broken-policy.toml");
    std::fs::write(
        &path,
        "[dimensions]\nfile_lookups = \"counter\"\n\n[classes.parse]\nwall_time = \"30 seconds\"\nlimits = { file_lookups = -5 }\n",
    )
    .unwrap();
    let err = Policy::from_toml_file(&path).unwrap_err();
    let lines: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
    let shown = path.display().to_string();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].starts_with(&format!("{shown}:5:13: classes.parse.wall_time: ")));
    assert!(lines[0].contains("\"30 seconds\""));
    assert!(lines[1].starts_with(&format!(
        "{shown}:6:27: classes.parse.limits.file_lookups: must not be negative"
    )));
}

#[test]
fn unknown_keys_are_rejected_everywhere() {
    let p = problems(
        "colour = 1\n[dimensions]\na = { kind = \"counter\", units = \"bytes\" }\n[classes.x]\nwalltime = \"1s\"\n",
    );
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(p[0].starts_with("line 1:1: colour: unknown key `colour`"));
    assert!(p[1].contains("dimensions.a.units: unknown key `units` (expected one of: kind, unit)"));
    assert!(p[2].contains("classes.x.walltime: unknown key `walltime`"));
}

#[test]
fn absurd_numbers_are_clear_errors() {
    let p = problems(
        r#"
[dimensions]
a = "counter"
b = "counter"
c = "counter"
d = "counter"
e = "counter"
[classes.x]
wall_time = "0s"
cpu_time = 5
child_margin = "none"
retries = 1.5
limits = { a = nan, b = 18446744073709551616, c = "2 MiB", d = inf, e = true }
"#,
    );
    let all = p.join("\n");
    for needle in [
        "classes.x.wall_time: must be greater than zero",
        "classes.x.cpu_time: a duration needs a unit",
        "classes.x.child_margin: malformed number in \"none\"",
        "classes.x.retries: 1.5 is not a whole number",
        "classes.x.limits.a: nan is not a whole number",
        "classes.x.limits.b: 18446744073709551616 is too large",
        "classes.x.limits.c: unknown or missing unit in \"2 MiB\"",
        "classes.x.limits.d: inf is not a whole number",
        "classes.x.limits.e: expected a whole number, found a boolean",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn names_and_structure_are_checked() {
    let p = problems(
        "[dimensions]\nretries = \"counter\"\n\"Bad Name\" = \"counter\"\nlvl = \"gauge\"\n[classes.x]\nlimits = { nope = 1, retries = 2 }\n[classes.y]\npriority = \"urgent\"\n",
    );
    let all = p.join("\n");
    for needle in [
        "dimensions.retries: `retries` is reserved",
        "`Bad Name` is not a valid name",
        "dimensions.lvl.kind: unknown kind \"gauge\"",
        "classes.x.limits.nope: unknown dimension `nope`",
        "classes.x.limits.retries: `retries` is set on the class itself",
        "classes.y.priority: \"urgent\": unknown priority",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn syntax_errors_have_a_location() {
    let p = problems("[classes.x]\nwall_time = = \"1s\"\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("line 2:"), "{p:?}");
    assert!(p[0].contains("invalid TOML"));
    let dup = problems("[classes.x]\nretries = 1\nretries = 2\n");
    assert!(dup[0].starts_with("line 3:"), "{dup:?}");
}

#[test]
fn empty_and_huge_inputs_are_refused() {
    assert!(problems("")[0].contains("a policy needs at least one class"));
    assert!(problems("[classes]\n")[0].contains("a policy needs at least one class"));
    let huge = format!("# {}\n[classes.x]\n", "x".repeat(2 << 20));
    assert!(problems(&huge)[0].contains("larger than"));
    let missing = Policy::from_toml_file("/nonexistent/costguard.toml").unwrap_err();
    assert!(missing.to_string().contains("cannot read policy file"));
}

#[test]
fn none_means_no_limit_for_times() {
    let p =
        Policy::from_toml_str("[classes.x]\nwall_time = \"none\"\ncpu_time = \"none\"\n").unwrap();
    let x = p.class("x").unwrap();
    assert_eq!((x.wall_time(), x.cpu_time()), (None, None));
}
