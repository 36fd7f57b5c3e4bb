"""Run the six benchmarks one after another and write docs/benchmarks.md (``make bench``).

    .venv/bin/python bench/run_all.py            # full run, writes docs/benchmarks.md
    BENCH_QUICK=1 .venv/bin/python bench/run_all.py   # smoke run, small sizes, writes var/bench/benchmarks.md
    .venv/bin/python bench/run_all.py --only lag,memory

One at a time, never in parallel: they share two cores and would measure each other. Every benchmark makes
its own fresh database and flushes its own Redis database, so a run can be interrupted and started again
with no clean-up. Each prints its figures; this runner keeps the output (var/bench/<name>.txt), the JSON
figures the benchmark saved (NURTURE_BENCH_OUT), and assembles the report: machine, date, load average,
every figure against its target, the command to reproduce it, and bench/analysis.md (profiles and
explanations for the targets missed, written by hand from bench/profile_send.py and EXPLAIN output).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import load_average, machine  # noqa: E402

PYTHON = ".venv/bin/python"


@dataclass(frozen=True)
class Benchmark:
    name: str  # also the name of the JSON file the script saves
    number: str
    title: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    target: str


BENCHMARKS = (
    Benchmark(
        "send_throughput", "1", "Throughput", "bench/send_throughput.py",
        ("--count", "20000"), ("--count", "2000"), "ratio to the raw smtplib limit >= 0.5",
    ),
    Benchmark(
        "send_throughput_dkim", "1b", "Throughput, DKIM-signed", "bench/send_throughput.py",
        ("--count", "10000", "--dkim"), ("--count", "1000", "--dkim"),
        "ratio >= 0.35 (raw limit unsigned)",
    ),
    Benchmark(
        "dispatch_scale", "2", "Dispatch at scale", "bench/dispatch_scale.py",
        ("--sizes", "1000000,5000000"), ("--sizes", "100000", "--rounds", "10"),
        "claim 1,000 due rows <= 20 ms, flat from 1M to 5M rows",
    ),
    Benchmark(
        "signup_load", "3", "Signup under load", "bench/signup_load.py",
        ("--rate", "200", "--duration", "60"), ("--rate", "200", "--duration", "10", "--warmup", "2"),
        "p99 <= 25 ms, 0 errors, confirmation queued (not sent in-request)",
    ),
    Benchmark(
        "lag", "4", "Lag", "bench/lag.py", ("--duration", "60"), ("--duration", "15"),
        "p99 (SMTP accepted - due) <= dispatch interval + 2 s",
    ),
    Benchmark(
        "import_enroll", "5", "Import and enrollment", "bench/import_enroll.py",
        ("--rows", "100000"), ("--rows", "10000"), "100,000 subscribers (800,000 deliveries) <= 30 s",
    ),
    Benchmark(
        "memory", "6", "Worker memory", "bench/memory.py", ("--count", "100000"), ("--count", "3000"),
        "RSS growth <= 10%, peak <= 200 MB per process",
    ),
)  # fmt: skip


@dataclass
class Outcome:
    benchmark: Benchmark
    command: str
    exit_code: int | None  # None: not run (script missing)
    seconds: float
    output: str
    result: dict[str, object] | None
    load_before: str


def run(benchmark: Benchmark, quick: bool, out: Path, timeout: float) -> Outcome:
    args = benchmark.quick if quick else benchmark.full
    command = shlex.join([PYTHON, benchmark.script, *args])
    if not (ROOT / benchmark.script).exists():
        return Outcome(benchmark, command, None, 0.0, "(script not present)", None, load_average())
    (out / f"{benchmark.name}.json").unlink(missing_ok=True)
    print(f"\n### {benchmark.number}. {benchmark.title}: {command}", flush=True)
    load_before = load_average()
    started = time.monotonic()
    lines: list[str] = []
    process = subprocess.Popen(
        [sys.executable, benchmark.script, *args],
        cwd=ROOT,
        env={**os.environ, "NURTURE_BENCH_OUT": str(out), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    deadline = started + timeout
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
        if time.monotonic() > deadline:
            process.kill()
            lines.append(f"\n(killed after {timeout:.0f} s)\n")
            break
    exit_code = process.wait()
    output = "".join(lines)
    (out / f"{benchmark.name}.txt").write_text(output)
    (out / f"{benchmark.name}.cmd").write_text(command + "\n")
    result_file = out / f"{benchmark.name}.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else None
    return Outcome(benchmark, command, exit_code, time.monotonic() - started, output, result, load_before)


def kept(benchmark: Benchmark, quick: bool, out: Path) -> Outcome:
    """The outcome of an earlier run, from the files it left (the .cmd file says how it was run)."""
    output_file, result_file = out / f"{benchmark.name}.txt", out / f"{benchmark.name}.json"
    command_file = out / f"{benchmark.name}.cmd"
    command = shlex.join([PYTHON, benchmark.script, *(benchmark.quick if quick else benchmark.full)])
    if command_file.exists():
        command = command_file.read_text().strip()
    if not output_file.exists():
        return Outcome(benchmark, command, None, 0.0, "(not run)", None, "-")
    output = output_file.read_text()
    result = json.loads(result_file.read_text()) if result_file.exists() else None
    load = next(
        (line.split(":", 1)[1].strip() for line in output.splitlines() if "load average at start" in line),
        "-",
    )
    return Outcome(benchmark, command, 0, 0.0, output, result, load)


def status(outcome: Outcome) -> str:
    if outcome.exit_code is None:
        present = (ROOT / outcome.benchmark.script).exists()
        return "not run" if present else f"not run: {outcome.benchmark.script} does not exist yet"
    if outcome.result is not None:
        return "**pass**" if outcome.result.get("passed") else "**FAIL**"
    tail = outcome.output[-2000:]
    if "PASS" in tail:
        return "**pass**"
    if "FAIL" in tail or outcome.exit_code != 0:
        return f"**FAIL** (exit {outcome.exit_code})"
    return "see output"


def figure(outcome: Outcome) -> str:
    if outcome.result is not None:
        return str(outcome.result.get("figure", ""))
    # A benchmark that saves no JSON (bench/import_enroll.py): its last lines that carry numbers.
    numeric = [line.strip() for line in outcome.output.splitlines() if any(c.isdigit() for c in line)]
    return "; ".join(numeric[-2:]).replace("|", "/") if numeric else "-"


def report(outcomes: list[Outcome], quick: bool, total_seconds: float, kept_only: bool = False) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    mode = "BENCH_QUICK=1 (smoke sizes: not the figures of record)" if quick else "full"
    if kept_only:
        mode += "; report rebuilt from each benchmark's saved result (each output has its own date)"
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (bench/run_all.py); do not edit by hand, edit bench/analysis.md instead.",
        "Issue 7 defines the six benchmarks and their targets; every script prints the machine, the load",
        "average and its parameters first, and can be run on its own with the command shown.",
        "",
        f"* machine: {machine()}",
        f"* date: {when}; run: {mode}" + ("" if kept_only else f"; {total_seconds / 60:.0f} minutes in all"),
        f"* load average (1/5/15 min) when the run ended: {load_average()}",
        "* reproduce everything: `make bench` (or `BENCH_QUICK=1 make bench` for a smoke run)",
        "",
        "| # | benchmark | figure | target | result | load average before | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        b = outcome.benchmark
        lines.append(
            f"| {b.number} | {b.title} | {figure(outcome)} | {b.target} | {status(outcome)} | "
            f"{outcome.load_before} | `{outcome.command}` |"
        )
    lines += ["", "## Output of each benchmark", ""]
    for outcome in outcomes:
        b = outcome.benchmark
        lines += [
            f"### {b.number}. {b.title}",
            "",
            f"`{outcome.command}`"
            + (f" ({outcome.seconds:.0f} s, exit {outcome.exit_code})" if outcome.seconds else ""),
            "",
            "```",
            outcome.output.rstrip()[-12000:],
            "```",
            "",
        ]
    analysis = ROOT / "bench" / "analysis.md"
    if analysis.exists():
        lines += [analysis.read_text().rstrip(), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="comma-separated names, e.g. lag,memory")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per benchmark")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write docs/benchmarks.md from the outputs kept in var/bench/full (or quick)",
    )
    args = parser.parse_args()
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    wanted = {name.strip() for name in args.only.split(",") if name.strip()}
    out = ROOT / "var" / "bench" / ("quick" if quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    selected = [b for b in BENCHMARKS if not wanted or b.name in wanted]
    if args.report_only:
        outcomes = [kept(benchmark, quick, out) for benchmark in selected]
    else:
        outcomes = [run(benchmark, quick, out, args.timeout) for benchmark in selected]
    partial = quick or (wanted and not args.report_only)
    target = ROOT / "var" / "bench" / "benchmarks.md" if partial else ROOT / "docs" / "benchmarks.md"
    target.write_text(report(outcomes, quick, time.monotonic() - started, kept_only=args.report_only))
    print(f"\nwrote {target.relative_to(ROOT)}")
    for outcome in outcomes:
        benchmark = outcome.benchmark
        print(f"  {benchmark.number}. {benchmark.title}: {status(outcome)}  {figure(outcome)}")


if __name__ == "__main__":
    main()
