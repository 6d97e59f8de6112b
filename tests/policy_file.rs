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

/// A key of the file can hold anything TOML allows in a quoted key; the field path that names it
/// in an error is escaped, so one problem stays one line (a log line, a terminal line).
#[test]
fn field_paths_in_errors_are_escaped() {
    let found = problems(
        "[classes.api]\nwall_time = \"1s\"\n[backends.\"a\\\"b\\nc\\u001b[31m\"]\ntimeout = \"1s\"\n",
    );
    assert!(!found.is_empty());
    for p in &found {
        assert!(
            !p.contains('\n') && !p.contains('\u{1b}'),
            "a raw control character in {p:?}"
        );
    }
    assert!(
        found
            .iter()
            .any(|p| p.contains("backends.a\\\"b\\nc\\u{1b}[31m")),
        "{found:?}"
    );
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

/// A name, key or host is repeated in an error only in part (its first 64 bytes, escaped), in the
/// message and in the field path alike: an error never grows with the text it is about.
#[test]
fn errors_stay_short_however_long_the_names_they_repeat() {
    let short = |err: &costguard::PolicyError| {
        for p in err.problems() {
            let p = p.to_string();
            assert!(p.len() < 1024, "{} bytes: {p}", p.len());
        }
    };
    // 200 KB of letters, of two-byte characters, and of control characters (100 KB, as each is
    // written in six bytes in the file).
    for long in [
        "X".repeat(200_000),
        "é".repeat(100_000),
        "\u{1b}".repeat(100_000),
    ] {
        let key = long.replace('\u{1b}', "\\u001b");
        for (field, source) in [
            ("dimensions.", "[dimensions]\n\"{key}\" = \"counter\"\n[classes.api]\n"),
            ("pools.", "[dimensions]\nq = \"counter\"\n[pools.\"{key}\"]\ndimension = \"q\"\nlimit = 1\n[classes.api]\n"),
            ("pools.p.dimension", "[pools.p]\ndimension = \"{key}\"\nlimit = 1\n[classes.api]\n"),
            ("classes.", "[classes.\"{key}\"]\n"),
            ("classes.api.limits.", "[classes.api]\nlimits = { \"{key}\" = 1 }\n"),
            ("classes.api.admission.pools", "[classes.api.admission]\nconcurrency = 4\npools = [\"{key}\"]\n"),
            ("classes.api.admission.headroom.", "[classes.api.admission]\nconcurrency = 4\nheadroom = { \"{key}\" = 0.5 }\n"),
            ("classes.api.admission.concurrency.algorithm", "[classes.api.admission]\nconcurrency = { algorithm = \"{key}\", max = 4 }\n"),
            ("backends.", "[classes.api]\n[backends.\"{key}\"]\n"),
            ("backends.db.hosts", "[classes.api]\n[backends.db]\nhosts = [\"{key}\"]\n"),
        ] {
            let err = Policy::from_toml_str(&source.replace("{key}", &key)).unwrap_err();
            assert!(
                err.problems().iter().any(|p| p.field.starts_with(field)),
                "no problem for {field}: {err}"
            );
            short(&err);
        }
        let code = Policy::builder()
            .counter(&long)
            .pool(&long, &long, 1)
            .class(&long, |c| c)
            .class("api", |c| {
                c.limit(&long, 1)
                    .admission(|a| a.concurrency(4).pool(&long))
            })
            .backend(&long, |b| b)
            .backend("db", |b| b.hosts(&[&long]).count(&long, 1))
            .build()
            .unwrap_err();
        assert!(code.problems().len() >= 7, "{code}");
        short(&code);
    }
    // What is repeated is the name's beginning, so the error still says which one.
    let p = problems(&format!("[classes.\"{}\"]\n", "A".repeat(1000)));
    assert_eq!(
        p,
        [format!(
            "line 1:10: classes.{0}: `{0}` is not a valid name: use 1 to 32 characters of a-z, 0-9 and _, starting with a letter",
            "A".repeat(64)
        )]
    );
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
    // A file whose size says 0 and that never ends is read up to the limit, not to the end.
    let endless = Policy::from_toml_file("/dev/zero").unwrap_err();
    assert!(endless.to_string().contains("larger than"), "{endless}");
    let dir = Policy::from_toml_file(std::env::temp_dir()).unwrap_err();
    assert!(dir.to_string().contains("cannot read policy file"), "{dir}");
    // A reader is held to the same limit, and its problems carry the name it was given.
    let endless = Policy::from_toml_reader(std::io::repeat(b' '), "stream").unwrap_err();
    assert!(endless.to_string().starts_with("stream: "), "{endless}");
    assert!(endless.to_string().contains("larger than"), "{endless}");
    let not_text = Policy::from_toml_reader(&b"# \xff\xfe"[..], "stream").unwrap_err();
    assert!(
        not_text.to_string().contains("not UTF-8 text (byte 2)"),
        "{not_text}"
    );
    // Too large is too large, even where the limit cuts a character in two.
    let mut big = vec![b'#'; costguard::policy::MAX_POLICY_BYTES];
    big.extend_from_slice("é\n".as_bytes());
    let big = Policy::from_toml_reader(&big[..], "big.toml").unwrap_err();
    assert!(big.to_string().contains("larger than"), "{big}");
    let wrong = Policy::from_toml_reader("[classes.x]\nwall_time = -1\n".as_bytes(), "p.toml");
    assert!(wrong.unwrap_err().problems()[0]
        .to_string()
        .starts_with("p.toml:2:13: classes.x.wall_time"));
}

#[test]
fn none_means_no_limit_for_times() {
    let p =
        Policy::from_toml_str("[classes.x]\nwall_time = \"none\"\ncpu_time = \"none\"\n").unwrap();
    let x = p.class("x").unwrap();
    assert_eq!((x.wall_time(), x.cpu_time()), (None, None));
}

#[test]
fn admission_settings_load_from_toml() {
    let policy = Policy::from_toml_str(
        r#"
[dimensions]
db_queries = "counter"

[pools.db_in_flight]
dimension = "db_queries"
limit = 400

[classes.api.admission]
concurrency = { algorithm = "gradient2", initial = 32, min = 8, max = 256, tolerance = 2.0, smoothing = 0.1, window = "500ms" }
headroom = { normal = 0.9, sheddable = 0.6, background = 0.25 }
queue = { capacity = 64, max_wait = "250ms", codel_target = "10ms", codel_interval = "200ms" }
pools = ["db_in_flight"]
per_key = { concurrency = 4, rate = 20, per = "1s", burst = 40, max_keys = 100000 }

[classes.batch.admission]
concurrency = { algorithm = "aimd", initial = 4, min = 1, max = 16, backoff = 0.75, latency_threshold = "2s" }
shadow = true
"#,
    )
    .unwrap();
    use costguard::policy::{Algorithm, Concurrency};
    let api = policy.class("api").unwrap().admission().unwrap();
    match api.concurrency() {
        Concurrency::Adaptive(a) => {
            assert_eq!((a.initial, a.min, a.max), (32, 8, 256));
            assert_eq!(a.window, Duration::from_millis(500));
            assert_eq!(
                a.algorithm,
                Algorithm::Gradient2 {
                    tolerance: 2000,
                    smoothing: 100
                }
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(api.headroom().0, [1000, 900, 600, 250]);
    let q = api.queue().unwrap();
    assert_eq!((q.capacity, q.max_wait), (64, Duration::from_millis(250)));
    assert_eq!(api.pools().collect::<Vec<_>>(), vec!["db_in_flight"]);
    let per_key = api.per_key().unwrap();
    let rate = per_key.rate.unwrap();
    assert_eq!((per_key.concurrency, per_key.max_keys), (Some(4), 100_000));
    assert_eq!(
        (rate.amount, rate.per, rate.burst),
        (20, Duration::from_secs(1), 40)
    );
    let batch = policy.class("batch").unwrap().admission().unwrap();
    assert!(batch.shadow());
    assert!(matches!(
        batch.concurrency(),
        Concurrency::Adaptive(a) if a.algorithm == Algorithm::Aimd { backoff: 750, latency_threshold: Duration::from_secs(2) }
    ));
    assert_eq!(policy.pools()[0].limit(), 400);
    let text = policy.to_string();
    assert!(text.contains("adaptive (gradient2), 8 to 256, starting at 32"));
    assert!(text.contains("concurrency 4, rate 20 per 1.000s (burst 40), 100000 keys tracked"));
}

#[test]
fn absurd_admission_settings_are_clear_errors() {
    let p = problems(
        r#"
[dimensions]
q = "counter"
lvl = "level"

[pools.a]
dimension = "lvl"
limit = 1
[pools.b]
dimension = "nope"
limit = 0
[pools.c]
limit = 5

[classes.zero.admission]
concurrency = 0
[classes.neg.admission]
concurrency = -3
[classes.nan.admission]
concurrency = { algorithm = "aimd", min = 10, max = 2, backoff = nan, latency_threshold = "0s" }
[classes.inverted.admission]
concurrency = { algorithm = "gradient2", initial = 50, min = 1, max = 10, tolerance = 0.5, smoothing = 2 }
[classes.unknown_algo.admission]
concurrency = { algorithm = "pid", max = 4 }
[classes.headroom.admission]
concurrency = 4
headroom = { critical = 0.5, normal = 1.5, urgent = 0.1, background = 0.9 }
pools = ["missing", "missing"]
[classes.queue.admission]
concurrency = 4
queue = { capacity = 0, max_wait = "0s" }
per_key = { per = "1s", max_keys = 0 }
[classes.nothing.admission]
shadow = "yes"
[classes.tiny.admission]
concurrency = 4
headroom = { sheddable = 0.0001, background = 0 }
[classes.codel.admission]
concurrency = 4
queue = { capacity = 4, codel_target = "2s", codel_interval = "100ms" }
[classes.uncounted.admission]
concurrency = 4
queue = { max_wait = "10ms" }
"#,
    );
    let all = p.join("\n");
    for needle in [
        "pools.a.dimension: `lvl` is a level; a pool holds a counter",
        "pools.b.dimension: unknown dimension `nope`",
        "pools.c: missing `dimension`",
        "classes.zero.admission.concurrency: must be between 1 and 16777216 (found 0)",
        "classes.neg.admission.concurrency: must not be negative (found -3)",
        "classes.nan.admission.concurrency.backoff: must be a finite number",
        "classes.nan.admission.concurrency.latency_threshold: must be greater than zero",
        "classes.inverted.admission.concurrency.tolerance: must be between 1 and 10 (found 0.5)",
        "classes.inverted.admission.concurrency.smoothing: must be a fraction above 0, at most 1 (found 2)",
        "classes.unknown_algo.admission.concurrency.algorithm: unknown algorithm",
        "classes.headroom.admission.headroom.normal: must be a fraction between 0 and 1 (found 1.5)",
        "classes.headroom.admission.headroom.urgent: unknown priority `urgent`",
        "classes.headroom.admission.pools: unknown pool `missing`",
        "classes.queue.admission.queue.capacity: must be between 1",
        "classes.queue.admission.queue.max_wait: must be greater than zero",
        "classes.queue.admission.per_key.rate: `per` and `burst` need `rate`",
        "classes.queue.admission.per_key.max_keys: must be between 1",
        "classes.nothing.admission.shadow: expected true or false, found a string",
        "classes.nothing.admission.concurrency: missing `concurrency`",
        "classes.codel.admission.queue.codel_target: must not be above codel_interval",
        "classes.uncounted.admission.queue: missing `capacity`",
        "classes.tiny.admission.headroom.sheddable: is below the resolution of 0.001 (found 0.0001); write 0 for none",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    // A capacity left out is missing, not written as 0.
    assert!(!all.contains("uncounted.admission.queue.capacity"), "{all}");
}

/// A setting that was written but could not be read is reported once, as what is wrong with it:
/// not also as missing, nor compared with a default standing in for it.
#[test]
fn a_value_that_cannot_be_read_is_reported_once() {
    let admission = |table: &str| format!("[classes.api.admission]\n{table}\n");
    let queue = |settings: &str| admission(&format!("concurrency = 4\nqueue = {{ {settings} }}"));
    let per_key =
        |settings: &str| admission(&format!("concurrency = 4\nper_key = {{ {settings} }}"));
    let pool = |settings: &str| {
        format!("[dimensions]\nq = \"counter\"\n[pools.p]\n{settings}\n[classes.api]\n")
    };
    let backend = |settings: &str| format!("[classes.api]\n[backends.db]\n{settings}\n");
    let api = "classes.api.admission";
    for (source, field, message) in [
        (
            admission("concurrency = 1.5"),
            format!("{api}.concurrency"),
            "1.5 is not a whole number",
        ),
        (
            admission("concurrency = \"many\""),
            format!("{api}.concurrency"),
            "malformed number in \"many\"",
        ),
        (
            admission("concurrency = { algorithm = 5, max = 4 }"),
            format!("{api}.concurrency.algorithm"),
            "expected a string, found an integer",
        ),
        (
            admission(
                "concurrency = { algorithm = \"aimd\", max = 1.5, latency_threshold = \"1ms\" }",
            ),
            format!("{api}.concurrency.max"),
            "1.5 is not a whole number",
        ),
        (
            admission("concurrency = { algorithm = \"aimd\", max = 4, latency_threshold = 5 }"),
            format!("{api}.concurrency.latency_threshold"),
            "a duration needs a unit, like \"30s\" or \"500ms\"",
        ),
        (
            queue("capacity = 1.5"),
            format!("{api}.queue.capacity"),
            "1.5 is not a whole number",
        ),
        (
            queue("capacity = 4, codel_target = 5, codel_interval = \"1ms\""),
            format!("{api}.queue.codel_target"),
            "a duration needs a unit, like \"30s\" or \"500ms\"",
        ),
        (
            per_key("rate = 1.5, per = \"1s\""),
            format!("{api}.per_key.rate"),
            "1.5 is not a whole number",
        ),
        (
            per_key("rate = true"),
            format!("{api}.per_key.rate"),
            "expected a whole number, found a boolean",
        ),
        (
            per_key("concurrency = 1.5"),
            format!("{api}.per_key.concurrency"),
            "1.5 is not a whole number",
        ),
        (
            pool("dimension = 5\nlimit = 1"),
            "pools.p.dimension".to_owned(),
            "expected a string, found an integer",
        ),
        (
            pool("dimension = \"q\"\nlimit = 1.5"),
            "pools.p.limit".to_owned(),
            "1.5 is not a whole number",
        ),
        (
            backend("breaker = { open_for = 5, max_open_for = \"500ms\" }"),
            "backends.db.breaker.open_for".to_owned(),
            "a duration needs a unit, like \"30s\" or \"500ms\"",
        ),
        (
            backend("retry = { backoff_base = \"0s\", backoff_max = \"1ms\" }"),
            "backends.db.retry.backoff_base".to_owned(),
            "must be greater than zero",
        ),
    ] {
        let err = Policy::from_toml_str(&source).unwrap_err();
        let found = err.problems();
        assert!(
            found.len() == 1 && found[0].field == field && found[0].message.starts_with(message),
            "expected only {field}: {message}, for\n{source}found\n{err}"
        );
    }
    // A required setting left out is still missing.
    for (source, needle) in [
        (
            admission("shadow = true"),
            "classes.api.admission.concurrency: missing `concurrency`",
        ),
        (
            admission("concurrency = { algorithm = \"aimd\", latency_threshold = \"1ms\" }"),
            "classes.api.admission.concurrency.max: an adaptive limit needs `max`",
        ),
        (
            admission("concurrency = { max = 4 }"),
            "classes.api.admission.concurrency: an adaptive limit needs `algorithm`",
        ),
        (
            admission("concurrency = { algorithm = \"aimd\", max = 4 }"),
            "classes.api.admission.concurrency.latency_threshold: aimd needs `latency_threshold`",
        ),
        (
            per_key("per = \"1s\""),
            "classes.api.admission.per_key.rate: `per` and `burst` need `rate`",
        ),
        (
            per_key("max_keys = 5"),
            "classes.api.admission.per_key: give `concurrency`, `rate`, or both",
        ),
        (pool("limit = 1"), "pools.p: missing `dimension`"),
        (pool("dimension = \"q\""), "pools.p: missing `limit`"),
    ] {
        let err = Policy::from_toml_str(&source).unwrap_err().to_string();
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn inverted_bounds_and_headroom_order_are_refused_in_code_too() {
    let err = Policy::builder()
        .class("a", |c| {
            c.admission(|a| a.aimd(5, 10, 2, 0.9, Duration::from_millis(100)))
        })
        .class("b", |c| c.admission(|a| a.gradient2(100, 1, 10)))
        .class("c", |c| {
            c.admission(|a| {
                a.concurrency(10)
                    .headroom(Priority::Background, 0.9)
                    .headroom(Priority::Sheddable, 0.5)
            })
        })
        .class("d", |c| {
            c.admission(|a| a.concurrency(10).headroom(Priority::Critical, 0.5))
        })
        .class("e", |c| {
            c.admission(|a| a.concurrency(10).headroom(Priority::Normal, f64::NAN))
        })
        .build()
        .unwrap_err();
    let all = err.to_string();
    for needle in [
        "classes.a.admission.concurrency.min: min 10 is above max 2",
        "classes.b.admission.concurrency.initial: must be between min 1 and max 10 (found 100)",
        "classes.c.admission.headroom.background: background work cannot see more of the limit (0.9) than sheddable work (0.5)",
        "classes.d.admission.headroom.critical: critical work always sees the whole limit",
        "classes.e.admission.headroom.normal: must be a fraction between 0 and 1 (found NaN)",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

/// A priority's share left out of a policy never exceeds the share above it, so lowering only
/// `normal` is enough to keep a reserve for critical work; two written shares out of order are
/// reported at the lower priority's line.
#[test]
fn headroom_defaults_follow_a_lowered_share_and_errors_point_at_the_share() {
    let p = Policy::from_toml_str(
        "[classes.api.admission]\nconcurrency = 10\nheadroom = { normal = 0.7 }\n",
    )
    .unwrap();
    let headroom = p.class("api").unwrap().admission().unwrap().headroom();
    assert_eq!(headroom.0, [1000, 700, 700, 500]);
    let err = Policy::from_toml_str(
        "[classes.api.admission]\nconcurrency = 10\n\n[classes.api.admission.headroom]\nnormal = 0.5\nsheddable = 0.9\n",
    )
    .unwrap_err();
    let problem = err
        .problems()
        .iter()
        .find(|p| p.field == "classes.api.admission.headroom.sheddable")
        .unwrap_or_else(|| panic!("{err}"));
    assert_eq!(problem.location.as_ref().unwrap().line, 6, "{err}");
    assert!(
        err.to_string()
            .contains("sheddable work cannot see more of the limit (0.9) than normal work (0.5)"),
        "{err}"
    );
}

/// Errors about one key of an admission table point at that key's line, not the table's.
#[test]
fn admission_errors_point_at_the_offending_key() {
    let src = "\
[classes.api]
wall_time = \"1s\"

[classes.api.admission]
concurrency = 4
headroom = { normal = 0.5, sheddable = 0.9 }

[classes.api.admission.queue]
max_wait = \"1s\"
capacity = 0
codel_interval = \"1ms\"

[classes.api.admission.per_key]
max_keys = 10
concurrency = 0
rate = 0
";
    let err = Policy::from_toml_str(src).unwrap_err();
    let line_of = |field: &str| problem_line(&err, field);
    assert_eq!(line_of("classes.api.admission.headroom.sheddable"), 6);
    assert_eq!(line_of("classes.api.admission.queue.capacity"), 10);
    // Only the interval was written: it is the one reported, against the default target.
    assert_eq!(line_of("classes.api.admission.queue.codel_interval"), 11);
    assert_eq!(line_of("classes.api.admission.per_key.concurrency"), 15);
    assert_eq!(line_of("classes.api.admission.per_key.rate"), 16);
    // A burst left out is the rate: not a problem of its own.
    assert!(!err.to_string().contains("per_key.burst"), "{err}");
}

/// Errors about an adaptive limit's settings point at the setting's line too.
#[test]
fn adaptive_limit_errors_point_at_the_offending_key() {
    let src = "\
[classes.api.admission.concurrency]
algorithm = \"gradient2\"
min = 5
max = 50
initial = 100
tolerance = 20.0
smoothing = 0.2
";
    let err = Policy::from_toml_str(src).unwrap_err();
    let line_of = |field: &str| problem_line(&err, field);
    assert_eq!(line_of("classes.api.admission.concurrency.tolerance"), 6);
    let err =
        Policy::from_toml_str(&src.replace("tolerance = 20.0", "tolerance = 2.0")).unwrap_err();
    let line = err.problems()[0].location.as_ref().unwrap().line;
    assert_eq!(
        (err.problems()[0].field.as_str(), line),
        ("classes.api.admission.concurrency.initial", 5),
        "{err}"
    );
}

/// The line of the problem reported for `field`.
fn problem_line(err: &costguard::PolicyError, field: &str) -> u32 {
    err.problems()
        .iter()
        .find(|p| p.field == field)
        .unwrap_or_else(|| panic!("no problem for {field}: {err}"))
        .location
        .as_ref()
        .unwrap()
        .line
}

/// Quantities and durations written with units reach a budget's limits as the numbers they stand
/// for.
#[test]
fn units_in_a_policy_file_become_the_budgets_limits() {
    let policy = Policy::from_toml_str(
        r#"
        [dimensions]
        bytes = { kind = "counter", unit = "bytes" }
        rows = "counter"
        [classes.api]
        wall_time = "1.5m"
        limits = { bytes = "1.5GiB", rows = "2M" }
        "#,
    )
    .unwrap();
    let engine = Engine::builder(policy)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let budget = engine
        .begin_by_name("api", costguard::RequestId::from_u64(1))
        .unwrap();
    let (bytes, rows) = (
        engine.counter("bytes").unwrap(),
        engine.counter("rows").unwrap(),
    );
    assert_eq!(budget.limit(bytes), Some(1_610_612_736));
    assert_eq!(budget.limit(rows), Some(2_000_000));
    assert_eq!(budget.remaining(), Duration::from_secs(90));
}

#[test]
fn problems_found_when_a_reload_is_applied_name_the_file_and_line() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let engine = Engine::builder(
        Policy::from_toml_str("[dimensions]\nq = \"counter\"\n[classes.api]\n").unwrap(),
    )
    .clock(ManualClock::new())
    .build()
    .unwrap();
    // A dimension changing kind is found only by the engine that handed out its handle.
    let path = dir.join("kind-change.toml");
    std::fs::write(&path, "[classes.api]\n\n[dimensions]\nq = \"level\"\n").unwrap();
    let err = engine.reload_file(&path).unwrap_err().to_string();
    let shown = path.display().to_string();
    assert!(
        err.starts_with(&format!("{shown}:4:1: dimensions.q: was a counter")),
        "{err}"
    );
    // From text: the line.
    let err = engine
        .reload_toml_str("[dimensions]\n\nq = \"level\"\n[classes.api]\n")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("line 3:1: dimensions.q: "), "{err}");
    // A policy built in code has no lines to give.
    let err = engine
        .reload(
            Policy::builder()
                .level("q")
                .class("api", |c| c)
                .build()
                .unwrap(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("dimensions.q: "), "{err}");
    assert_eq!(engine.generation(), 1);
}

#[test]
fn where_a_policy_was_written_is_not_part_of_what_it_says() {
    let a = Policy::from_toml_str("[classes.api]\nretries = 2\n").unwrap();
    let b = Policy::from_toml_str("\n\n[classes.api]\n\nretries = 2\n").unwrap();
    let c = Policy::builder()
        .class("api", |c| c.retries(2))
        .build()
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c);
}
