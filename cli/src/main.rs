//! `costguard`: replays the incidents costguard exists for, with and without it, and checks policy
//! files.
//!
//! Exit codes: 0 on success, 1 when a policy or a replay fails (the reason on stderr), 2 on usage
//! errors.

mod check;

use clap::{Parser, Subcommand};
use costguard::Policy;
use costguard_cli::{chart, table, Comparison, ReplayOptions, ScenarioInfo};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Replays the outages costguard exists for, without and with it; checks policy files.
#[derive(Parser, Debug)]
#[command(
    name = "costguard",
    version,
    about,
    long_about = None,
    after_help = "Exit status: 0 on success, 1 when a policy or a replay fails, 2 on usage errors."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay a scenario twice, unguarded and guarded by the real engine, and compare the runs.
    ///
    /// Both runs are discrete-event simulations on a manual clock: no sleeping, and the same seed
    /// prints the same output, byte for byte. Without a scenario name, every incident scenario runs,
    /// one after the other.
    Replay(ReplayArgs),
    /// Validate a policy file and print the effective policy, or every error, each with the file's
    /// name and, where the error has a position, its line:column.
    Check {
        /// The policy file (TOML).
        policy: PathBuf,
    },
    /// List the built-in scenarios, one per line (incidents are marked with *).
    Scenarios,
}

#[derive(clap::Args, Debug)]
struct ReplayArgs {
    /// The scenario to replay (see `costguard scenarios`); without it, every incident scenario.
    scenario: Option<String>,
    /// Guard with this policy file instead of the scenario's own.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Seed of every random choice of the simulation.
    #[arg(long, value_name = "N", default_value_t = ReplayOptions::default().seed)]
    seed: u64,
    /// Print JSON instead of the table: one object per scenario with an "unguarded" and a "guarded"
    /// run; an array of them when several scenarios run.
    #[arg(long)]
    json: bool,
    /// Also write a chart (SVG) of 5xx per minute and busy threads. When several scenarios run,
    /// each gets its own file, named after the scenario: `--plot out.svg` writes
    /// `out-commons-2015.svg`, `out-kafka-2016.svg`, ... Given a directory (one that exists, or a
    /// path ending in `/`), each scenario's chart goes into it: `--plot charts/` writes
    /// `charts/commons-2015.svg`, ...
    #[arg(long, value_name = "FILE.svg|DIR/")]
    plot: Option<PathBuf>,
}

/// Why the command stops early.
enum Failed {
    /// A failure: exit code 1, with this message (`None` when it is already printed).
    Error(Option<String>),
    /// A usage error clap cannot see (an unknown scenario name): exit code 2, with this message.
    Usage(String),
    /// Whoever reads stdout has gone (`costguard replay | head`): stop quietly, with success.
    PipeClosed,
}

impl<E: std::fmt::Display> From<E> for Failed {
    fn from(e: E) -> Self {
        Failed::Error(Some(e.to_string()))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => replay(&args),
        Command::Check { policy } => check(&policy),
        Command::Scenarios => scenarios(),
    };
    match result {
        Ok(()) | Err(Failed::PipeClosed) => ExitCode::SUCCESS,
        Err(Failed::Error(message)) => {
            if let Some(message) = message {
                say(&format!("costguard: {message}"));
            }
            ExitCode::FAILURE
        }
        Err(Failed::Usage(message)) => {
            say(&format!("costguard: {message}"));
            ExitCode::from(2)
        }
    }
}

/// Writes a line to stderr. A stderr that cannot be written (a closed pipe) changes nothing:
/// the exit code still says how the command went.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn scenarios() -> Result<(), Failed> {
    let all = costguard_cli::scenarios();
    let width = all.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut text = String::new();
    for s in all {
        let mark = if s.incident { '*' } else { ' ' };
        text.push_str(&format!(
            "{mark} {:<width$}  {}\n",
            s.name,
            s.summary,
            width = width
        ));
    }
    if !all.is_empty() {
        text.push_str("\n* an incident: `costguard replay` with no name runs it\n");
    }
    print(&text)
}

fn check(path: &Path) -> Result<(), Failed> {
    let policy = load_policy(path)?;
    print(&format!(
        "{}: a valid policy: {}\n\n{}",
        path.display(),
        check::summary(&policy),
        check::describe(&policy)
    ))
}

/// Reads a policy file; on failure prints every problem to stderr, one per line, each starting with
/// the file's name (and line:column, where the problem has a position).
fn load_policy(path: &Path) -> Result<Policy, Failed> {
    Policy::from_toml_file(path).map_err(|e| {
        let problems = e.problems().len();
        let file = path.display().to_string();
        for problem in e.problems() {
            // A problem of the whole file (no class at all, an empty file) has no position, so
            // nothing names the file unless we do; a read error's field is already the file.
            if problem.location.is_some() || problem.field == file {
                say(&problem.to_string());
            } else {
                say(&format!("{file}: {problem}"));
            }
        }
        Failed::Error(Some(format!(
            "{} is not a valid policy ({problems} problem{})",
            path.display(),
            if problems == 1 { "" } else { "s" }
        )))
    })
}

fn replay(args: &ReplayArgs) -> Result<(), Failed> {
    let names: Vec<String> = match &args.scenario {
        Some(name) => vec![name.clone()],
        None => costguard_cli::scenarios()
            .iter()
            .filter(|s| s.incident)
            .map(|s| s.name.to_owned())
            .collect(),
    };
    // The policy first: its errors are the user's to fix whatever the scenario.
    let policy = args.policy.as_deref().map(load_policy).transpose()?;
    if names.is_empty() {
        return Err("no incident scenarios are built in".into());
    }
    if let Some(name) = &args.scenario {
        known_scenario(name)?;
    }
    // A policy must suit every scenario to run before the first one runs: a failure on the second
    // would otherwise come after the first one's table and chart.
    if let Some(policy) = &policy {
        let unfit: Vec<String> = names
            .iter()
            .filter_map(|name| {
                costguard_cli::check_policy(name, policy)
                    .err()
                    .map(|e| format!("{name}: {e}"))
            })
            .collect();
        if !unfit.is_empty() {
            return Err(unfit.join("\ncostguard: ").into());
        }
        // Settings the simulation has nothing for: said, rather than silently without effect.
        for class in policy.classes() {
            for unused in unused_in_replay(class) {
                say(&format!(
                    "costguard: note: class {}: {unused}",
                    class.name()
                ));
            }
        }
    }
    let options = ReplayOptions {
        seed: args.seed,
        policy,
    };

    let several = names.len() > 1;
    // Every run, then every chart, then the output: a chart that cannot be written fails the
    // command before any table is printed, not after the first scenario's.
    let comparisons = names
        .iter()
        .map(|name| run_with_progress(name, &options))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(plot) = &args.plot {
        for (name, comparison) in names.iter().zip(&comparisons) {
            let path = plot_path(plot, name, several);
            std::fs::write(&path, chart::render(comparison))
                .map_err(|e| format!("cannot write the chart to {}: {e}", path.display()))?;
            say(&format!("costguard: chart written to {}", path.display()));
        }
    }
    if !args.json {
        for (i, comparison) in comparisons.iter().enumerate() {
            let separator = if i > 0 { "\n" } else { "" };
            print(&format!("{separator}{}", table::render(comparison)))?;
        }
    }
    if args.json {
        let json = if several {
            serde_json::to_string_pretty(&comparisons)
        } else {
            serde_json::to_string_pretty(&comparisons[0])
        }?;
        print(&format!("{json}\n"))?;
    }
    Ok(())
}

/// What in `class` no replay uses. Every door of the replay is a `try_admit`, which never waits;
/// simulated requests spend no CPU time and carry no key.
fn unused_in_replay(class: &costguard::policy::ClassPolicy) -> Vec<&'static str> {
    let admission = class.admission();
    [
        (
            admission.and_then(|a| a.queue()).is_some(),
            "the replay admits with try_admit, which never waits; its queue is not used",
        ),
        (
            class.cpu_time().is_some(),
            "simulated requests spend no CPU time; its cpu_time is not used",
        ),
        (
            admission.and_then(|a| a.per_key()).is_some(),
            "simulated requests carry no key; its per_key limits are not used",
        ),
    ]
    .into_iter()
    .filter_map(|(unused, note)| unused.then_some(note))
    .collect()
}

/// Refuses an unknown name before any work, listing the names there are.
fn known_scenario(name: &str) -> Result<&'static ScenarioInfo, Failed> {
    let all = costguard_cli::scenarios();
    all.iter().find(|s| s.name == name).ok_or_else(|| {
        let known: Vec<&str> = all.iter().map(|s| s.name).collect();
        Failed::Usage(if known.is_empty() {
            format!("no scenario named `{name}`: no scenarios are built in")
        } else {
            format!(
                "no scenario named `{name}`; the scenarios are: {}",
                known.join(", ")
            )
        })
    })
}

/// Where `--plot` puts `scenario`'s chart: into the directory `plot` names (`charts/` and
/// `kafka-2016` give `charts/kafka-2016.svg`); else `plot` itself when it is the only chart, and
/// beside it when there are `several` (`out.svg` gives `out-kafka-2016.svg`).
fn plot_path(plot: &Path, scenario: &str, several: bool) -> PathBuf {
    // A trailing separator says "a directory" even before it exists (writing then fails clearly).
    let names_a_directory = plot
        .as_os_str()
        .to_string_lossy()
        .ends_with(std::path::is_separator);
    if names_a_directory || plot.is_dir() {
        return plot.join(format!("{scenario}.svg"));
    }
    if !several {
        return plot.to_path_buf();
    }
    let stem = plot
        .file_stem()
        .map_or_else(|| "costguard".into(), |s| s.to_string_lossy().into_owned());
    let extension = plot
        .extension()
        .map_or_else(|| "svg".into(), |e| e.to_string_lossy().into_owned());
    plot.with_file_name(format!("{stem}-{scenario}.{extension}"))
}

/// How long a replay runs before a progress bar appears.
const PROGRESS_AFTER: Duration = Duration::from_millis(300);

/// Replays one scenario, with a progress bar on stderr if that is a terminal and the replay takes
/// longer than [`PROGRESS_AFTER`]. Nothing of it reaches stdout.
fn run_with_progress(name: &str, options: &ReplayOptions) -> Result<Comparison, Failed> {
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut bar: Option<ProgressBar> = None;
    let mut progress = |done: f64| {
        if !terminal {
            return;
        }
        let done = if done.is_finite() {
            done.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if bar.is_none() && started.elapsed() >= PROGRESS_AFTER {
            // Hidden until styled and placed, so that its first frame is already right.
            let b = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::hidden())
                .with_elapsed(started.elapsed());
            if let Ok(style) =
                ProgressStyle::with_template("{prefix} [{bar:40}] {percent:>3}% ({elapsed})")
            {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(format!("replaying {name}"));
            b.set_position((done * 1000.0).round() as u64);
            b.set_draw_target(ProgressDrawTarget::stderr());
            bar = Some(b);
        }
        if let Some(b) = &bar {
            b.set_position((done * 1000.0).round() as u64);
        }
    };
    let result = costguard_cli::replay(name, options, &mut progress);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(result?)
}

/// Writes to stdout; a closed pipe (`costguard replay | head`) ends the command quietly.
fn print(text: &str) -> Result<(), Failed> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failed::PipeClosed),
        Err(e) => Err(format!("cannot write to stdout: {e}").into()),
    }
}
