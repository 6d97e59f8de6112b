#!/usr/bin/env python3
"""Prints the ratios of the `budget` benchmarks against the baselines measured in the same run.

Reads criterion's output (target/criterion/<group>/<bench>/new/{benchmark,estimates,sample}.json)
after

    cargo bench --bench budget            # or one group, e.g. `cargo bench --bench budget -- charge`

and prints, for every pair below, the subject's and the baseline's time per iteration and their ratio
(for the contention group, the ratio of aggregate throughputs), with the goal where there is one.

Two statistics are shown for every ratio:
  - criterion's median (or --stat mean/slope): what criterion prints;
  - the fastest sample (sample.json, time/iterations of the best of the ~100 samples). On a shared
    machine a neighbour can only ever add time, so the fastest sample is the steadiest estimate of
    the intrinsic cost; the median moves with whatever the neighbours did during those 4 seconds.
    (Not for the contention rows, where the fastest sample is an uncontended one.)

    python3 benches/ratios.py [--stat median|mean|slope] [--markdown] [--criterion-dir DIR]

Exit status: 0 when every goal is met by at least one of the two statistics (contention: by the
criterion estimate), 1 when a goal is missed, 2 when a figure is missing. Only the Python standard library is used.
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

# (group, subject, baseline, kind, goal)
#   kind "time": ratio = subject time / baseline time; goal is a maximum.
#   kind "throughput": ratio = subject ops/s / baseline ops/s, both aggregate (criterion's
#     Throughput::Elements per iteration = number of threads); goal is a minimum.
#   kind "abs_ns": the subject's own time in nanoseconds; goal is a maximum; the baseline is only shown.
PAIRS = [
    ("charge", "try_charge_root", "atomic_cas_add_if_below", "time", 1.5),
    ("charge", "try_charge_root", "atomic_fetch_add", "time", None),
    ("charge", "try_charge_root_whole_result", "atomic_cas_add_if_below", "time", None),
    ("charge", "atomic_fetch_add", "atomic_cas_add_if_below", "time", None),
    ("charge", "try_charge_child_depth1", "atomic_cas_add_if_below_x2", "time", None),
    ("charge", "try_charge_child_depth3", "atomic_cas_add_if_below", "time", None),
    ("charge", "try_charge_many_2dims", "atomic_cas_add_if_below_x2", "time", None),
    ("charge", "refund", "atomic_cas_add_if_below", "time", None),
    ("charge", "enter_drop_level_guard", "atomic_cas_add_if_below", "time", None),
    ("charge", "refused_limit_exceeded", "atomic_cas_add_if_below", "time", None),
    ("charge", "refused_cannot_fit", "atomic_cas_add_if_below", "time", None),
    ("cancel_flag", "is_cancelled", "relaxed_load_u32", "time", 1.5),
    ("deadline", "expired_monotonic_coarse", "relaxed_load_u64", "abs_ns", 3.0),
    ("deadline", "expired_monotonic_coarse", "relaxed_load_u64", "time", None),
    ("deadline", "check_monotonic_coarse", "relaxed_load_u64", "time", None),
    ("deadline", "expired_manual", "relaxed_load_u64", "time", None),
    ("deadline", "check_manual", "relaxed_load_u64", "time", None),
    ("deadline", "check_manual_whole_result", "relaxed_load_u64", "time", None),
    ("deadline", "instant_now", "relaxed_load_u64", "time", None),
    ("deadline", "expired_monotonic_coarse", "instant_now", "time", None),
    ("deadline", "remaining_monotonic_precise", "instant_now", "time", None),
    ("contention", "try_charge_2threads_shared", "try_charge_1thread", "throughput", 0.40),
    ("contention", "cas_2threads_shared", "cas_1thread", "throughput", None),
    ("contention", "fetch_add_2threads_shared", "fetch_add_1thread", "throughput", None),
    ("contention", "try_charge_2threads_shared", "cas_2threads_shared", "throughput", None),
    ("contention", "try_charge_2threads_separate", "try_charge_1thread", "throughput", None),
    ("contention", "try_charge_1thread", "cas_1thread", "time", None),
]

# Figures whose files were written further apart than this are probably not from the same run.
SAME_RUN_SECONDS = 5 * 60


class Bench:
    def __init__(self, estimates, samples, elements, mtime, parallelism):
        self.estimates = estimates
        self.samples = samples
        self.elements = elements
        self.mtime = mtime
        self.parallelism = parallelism

    def nanos(self, stat):
        """Time per iteration, in nanoseconds, by `stat` (a criterion estimate, or "min")."""
        if stat == "min":
            if not self.samples:
                return None
            return min(t / n for t, n in zip(self.samples["times"], self.samples["iters"]))
        est = self.estimates.get(stat)
        if est is None and stat == "slope":
            est = self.estimates.get("mean")
        return None if est is None else est["point_estimate"]


def load_json(path):
    with open(path) as f:
        return json.load(f)


def load(criterion_dir):
    """Maps (group, function) to a Bench."""
    found = {}
    for bench_json in Path(criterion_dir).glob("**/new/benchmark.json"):
        new = bench_json.parent
        if not (new / "estimates.json").exists():
            continue
        meta = load_json(bench_json)
        samples = load_json(new / "sample.json") if (new / "sample.json").exists() else None
        throughput = meta.get("throughput") or {}
        elements = throughput.get("Elements", 1) if isinstance(throughput, dict) else 1
        par_json = new.parent / "parallelism.json"
        parallelism = load_json(par_json) if par_json.exists() else None
        key = (meta.get("group_id"), meta.get("function_id"))
        found[key] = Bench(load_json(new / "estimates.json"), samples, elements,
                           os.path.getmtime(new / "estimates.json"), parallelism)
    return found


def ratio(kind, s, b, s_ns, b_ns):
    if kind == "time":
        return s_ns / b_ns
    if kind == "throughput":
        return (s.elements / s_ns) / (b.elements / b_ns)
    return s_ns  # abs_ns


def fmt(kind, value):
    if kind == "time":
        return f"{value:.2f}x"
    if kind == "throughput":
        return f"{value:.2f}"
    return f"{value:.2f} ns"


def meets(kind, value, goal):
    return value >= goal if kind == "throughput" else value <= goal


def main():
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stat", choices=["median", "mean", "slope"], default="median",
                        help="criterion estimate for the first ratio column (default: median)")
    parser.add_argument("--criterion-dir", default=str(here.parent / "target" / "criterion"))
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()

    data = load(args.criterion_dir)
    if not data:
        print(f"no criterion results under {args.criterion_dir}; run `cargo bench --bench budget`",
              file=sys.stderr)
        return 2

    header = ("group", "subject", "baseline", f"subject ns ({args.stat})",
              f"baseline ns ({args.stat})", f"ratio ({args.stat})", "ratio (fastest)", "goal", "",
              "note")
    rows = []
    status = 0
    for group, subject, baseline, kind, goal in PAIRS:
        s = data.get((group, subject))
        b = data.get((group, baseline))
        if s is None or b is None:
            missing = subject if s is None else baseline
            rows.append((group, subject, baseline, "-", "-", "-", "-", "", "?",
                         "missing: " + missing))
            status = max(status, 2)
            continue
        s_ns, b_ns = s.nanos(args.stat), b.nanos(args.stat)
        s_min, b_min = s.nanos("min"), b.nanos("min")
        main_value = ratio(kind, s, b, s_ns, b_ns)
        # For the contention rows the fastest sample is not a steadier estimate: a sample in which the
        # threads never ran at once (timed over all its chunks, see benches/budget.rs) is faster than
        # a contended one. Those rows use the criterion estimate only.
        min_value = (None if kind == "throughput" or s_min is None or b_min is None
                     else ratio(kind, s, b, s_min, b_min))
        notes = []
        if kind == "throughput":
            notes.append(f"{s.elements * 1e3 / s_ns:.0f} vs {b.elements * 1e3 / b_ns:.0f} Mops/s")
            if s.parallelism is not None:
                notes.append(f"parallelism {s.parallelism.get('parallelism', 0):.2f}, "
                             f"{100 * s.parallelism.get('parallel_chunks', 0):.0f}% of chunks "
                             "with all threads running")
        if abs(s.mtime - b.mtime) > SAME_RUN_SECONDS:
            notes.append("different runs?")
        verdict, goal_text = "", ""
        if goal is not None:
            goal_text = {"time": f"<= {goal}x", "throughput": f">= {goal:.2f}",
                         "abs_ns": f"< {goal} ns"}[kind]
            ok_main = meets(kind, main_value, goal)
            ok_min = min_value is not None and meets(kind, min_value, goal)
            if min_value is None:
                verdict = "met" if ok_main else "MISSED"
                status = max(status, 0 if ok_main else 1)
            elif ok_main and ok_min:
                verdict = "met"
            elif ok_main or ok_min:
                verdict = f"met ({args.stat if ok_main else 'fastest'} only)"
            else:
                verdict = "MISSED"
                status = max(status, 1)
        rows.append((group, subject, baseline, f"{s_ns:.2f}", f"{b_ns:.2f}",
                     fmt(kind, main_value), "-" if min_value is None else fmt(kind, min_value),
                     goal_text, verdict, "; ".join(notes)))

    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
        for r in [header] + rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"\nratio ({args.stat}): criterion's {args.stat} time per iteration; ratio (fastest): the "
          "fastest sample of each benchmark.\nthroughput rows (contention) compare aggregate "
          "operations per second, timed only over chunks in which every thread had a core;\n"
          "parallelism = the threads' CPU time / wall time over all chunks (2.00 when both threads "
          "always had a core).")
    return status


if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into `head`
    sys.exit(main())
