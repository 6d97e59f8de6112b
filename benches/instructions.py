#!/usr/bin/env python3
"""Counts the instructions of each hot path under callgrind and checks them against the record.

Usage: python3 benches/instructions.py [--bless]

Builds `benches/instructions.rs` in the bench profile, runs each subject under
`valgrind --tool=callgrind`, collecting only inside its measuring function, at two iteration counts,
and takes the difference: what one more operation costs, with every fixed cost (the first call,
the loop's entry) cancelled out. The loop's own cost (the `noop` subject) is subtracted.

`benches/instructions.txt` records the figures with the compiler and the target they were measured
with. A subject more than TOLERANCE above its record fails the check; one well below it is
reported, so that the record can follow an improvement (`--bless` writes the measured figures).
Another compiler may generate somewhat different code, and another processor makes the C library
pick other versions of `memcpy` and the like: the tolerance is then LOOSE, and the run says so. On
another architecture the record means nothing and the check is skipped.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RECORD = os.path.join(HERE, "instructions.txt")

# A count above record * (1 + tolerance) + SLACK fails.
TOLERANCE = 0.05
LOOSE = 0.20
SLACK = 4
# Two runs, N and 2N operations: (count(2N) - count(N)) / N per operation.
N = 20_000


def build():
    """Builds the harness and returns the path of its executable."""
    out = subprocess.run(
        ["cargo", "bench", "--bench", "instructions", "--no-run", "--message-format=json"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "instructions":
            if msg.get("executable"):
                return msg["executable"]
    sys.exit("cargo built no executable for benches/instructions.rs")


def collected(exe, subject, iters):
    """Instructions executed inside `measure` for `iters` operations of `subject`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--toggle-collect=instructions::measure",
                f"--callgrind-out-file={out}",
                exe,
                subject,
                str(iters),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with open(out) as f:
            for line in f:
                if line.startswith("totals:") or line.startswith("summary:"):
                    return int(line.split()[1])
    sys.exit(f"callgrind wrote no total for {subject}")


def per_op(exe, subject):
    return (collected(exe, subject, 2 * N) - collected(exe, subject, N)) / N


def toolchain():
    rustc = subprocess.run(["rustc", "--version"], check=True, stdout=subprocess.PIPE, text=True)
    return rustc.stdout.strip(), platform.machine(), cpu()


def cpu():
    """The processor's model name, where Linux tells it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def read_record():
    record, meta = {}, {}
    if not os.path.exists(RECORD):
        return record, meta
    with open(RECORD) as f:
        for line in f:
            line = line.strip()
            if line.startswith("# rustc:"):
                meta["rustc"] = line.split(":", 1)[1].strip()
            elif line.startswith("# machine:"):
                meta["machine"] = line.split(":", 1)[1].strip()
            elif line.startswith("# cpu:"):
                meta["cpu"] = line.split(":", 1)[1].strip()
            elif line and not line.startswith("#"):
                name, count = line.split()
                record[name] = float(count)
    return record, meta


def write_record(figures, rustc, machine, model):
    with open(RECORD, "w") as f:
        f.write("# Instructions per operation of each hot path, less the loop's own, as counted by\n")
        f.write("# `python3 benches/instructions.py` (`--bless` rewrites this file).\n")
        f.write(f"# rustc: {rustc}\n")
        f.write(f"# machine: {machine}\n")
        f.write(f"# cpu: {model}\n")
        for name, count in figures.items():
            f.write(f"{name} {count:.0f}\n")


def main():
    bless = "--bless" in sys.argv[1:]
    if subprocess.run(["valgrind", "--version"], stdout=subprocess.DEVNULL).returncode != 0:
        sys.exit("valgrind is needed")
    rustc, machine, model = toolchain()
    record, meta = read_record()
    if not bless and meta.get("machine") not in (None, machine):
        print(f"recorded on {meta['machine']}, this is {machine}: nothing to compare, skipped")
        return 0
    exe = build()
    subjects = subprocess.run([exe, "--list"], check=True, stdout=subprocess.PIPE, text=True)
    subjects = subjects.stdout.split()
    loop = per_op(exe, "noop")
    figures = {s: per_op(exe, s) - loop for s in subjects if s != "noop"}
    if bless:
        write_record(figures, rustc, machine, model)
        print(f"recorded in {os.path.relpath(RECORD, ROOT)}:")
        for name, count in figures.items():
            print(f"  {name:<20} {count:8.0f}")
        return 0
    tolerance = TOLERANCE
    if meta.get("rustc") != rustc:
        tolerance = LOOSE
        print(f"recorded with {meta.get('rustc')}, built with {rustc}: tolerance {LOOSE:.0%}")
    if meta.get("cpu") != model:
        tolerance = LOOSE
        print(f"recorded on {meta.get('cpu')}, run on {model}: tolerance {LOOSE:.0%}")
    failed = []
    print(f"{'subject':<20} {'record':>8} {'now':>8}  change")
    for name, count in figures.items():
        was = record.get(name)
        if was is None:
            print(f"{name:<20} {'-':>8} {count:8.0f}  not recorded (run with --bless)")
            failed.append(name)
            continue
        change = (count - was) / was if was else 0.0
        note = ""
        if count > was * (1 + tolerance) + SLACK:
            note = "  MORE than recorded: a slower hot path?"
            failed.append(name)
        elif count < was * (1 - tolerance) - SLACK:
            note = "  fewer: record it with --bless"
        print(f"{name:<20} {was:8.0f} {count:8.0f}  {change:+.1%}{note}")
    for name in record:
        if name not in figures:
            print(f"{name:<20} recorded but no longer measured (run with --bless)")
            failed.append(name)
    if failed:
        print(f"over the record (+{tolerance:.0%}): {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
