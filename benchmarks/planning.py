"""Planning benchmark: how long `snakemake -n` takes to plan a long run.

For each R in --rounds, writes a config (one seed; methods random, svpp, asvp; strategy margin;
R rounds of --budget labels each; only the last round evaluated, unless --eval all) into a fresh
temporary directory and times, in that directory (no results, no data: a dry run reads neither),

    python -m snakemake -s SNAKEFILE -d TMP/wd --configfile TMP/config.yaml -n --cores 2 --quiet rules

`--quiet rules` keeps the per-job records out of the output but leaves the "Job stats" table,
whose `total` row is the planned job count (`--quiet all` prints no table and is not faster:
the dry-run executor formats every job's command and resources either way). The output is read
line by line, unbuffered, so the time to the line "Building DAG of jobs..." (start-up: imports,
Snakefile parse, config validation) is reported apart from the rest (DAG building, the dry-run
executor and its summary). CPU seconds (user + system of the dry run) are reported beside the
wall time: on a loaded machine they move much less.

    python benchmarks/planning.py --rounds 5                       # seconds; prints the table
    python benchmarks/planning.py --rounds 100 900 --out BENCHMARKS.md
    python benchmarks/planning.py --rounds 900 --extra=--rerun-triggers=mtime
    python benchmarks/planning.py --rounds 900 --profile prof.out  # under cProfile (about 2.5x slower)
    python benchmarks/planning.py --rounds 900 --snakefile /tmp/snapshot/Snakefile  # another copy
    python benchmarks/planning.py --rounds 900 --floor             # also Snakemake's own floor

`--floor` also times, the same way, a minimal workflow (FLOOR_SNAKEFILE: one trivial rule, one
input function, two outputs, no log, an empty command) planning as many jobs as the plan, in
chains as long as the plan's rounds: what Snakemake 9 itself needs for that many jobs on this
machine, whatever the workflow. `ours / floor` is then the share our rules add, measured on the
same machine at the same load.

Every timing is the best of --repeats; other work sharing the CPUs makes them longer, never
shorter.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
SNAKEFILE = CHECKOUT / "Snakefile"
TARGET_SECONDS = 10.0  # a 900-round plan (a multi-day run) should plan in at most this long
DAG_LINE = "Building DAG of jobs..."


@dataclass
class Timing:
    rounds: int
    jobs: int
    seconds: float
    startup: float  # to "Building DAG of jobs..."
    cpu: float  # user + system CPU seconds of the dry run (less sensitive to other load than wall time)
    command: str
    floor: Timing | None = None  # the minimal workflow with as many jobs (--floor)


# Snakemake's floor: the cheapest job a round could be (what bounds the plan's time).
FLOOR_SNAKEFILE = """\
import sys
sys.setrecursionlimit(100000)
JOBS, LENGTH = int(config["jobs"]), int(config["length"])
CHAINS = [(c, min(LENGTH, JOBS - c * LENGTH)) for c in range(-(-JOBS // LENGTH))]


rule all:
    input:
        [f"res/chain{c}/step{n - 1:04d}/done" for c, n in CHAINS],


rule first:
    output:
        "res/chain{c}/step0000/done",
        "res/chain{c}/step0000/extra",
    shell:
        ""


rule step:
    wildcard_constraints:
        i=r"(?!0000)\\d{4}",
    input:
        lambda w: f"res/chain{w.c}/step{int(w.i) - 1:04d}/done",
    output:
        "res/chain{c}/step{i}/done",
        "res/chain{c}/step{i}/extra",
    shell:
        ""
"""


def write_config(folder: Path, rounds: int, budget: int, evaluate: str, pool: int) -> Path:
    """A self-contained config: R equal rounds, only the last one evaluated (or all)."""
    budgets = [budget] * rounds
    at = "all" if evaluate == "all" else f"[{budget * rounds}]"
    text = (
        f"experiment: planning_{rounds}\n"
        "seeds: [0]\n"
        "methods: [random, svpp, asvp]\n"
        "strategies: [margin]\n"
        f"data: {{pool_subset: {pool}}}\n"
        f"schedule: {{budgets: [{', '.join(map(str, budgets))}]}}\n"
        # No extra random rounds: the plan keeps the shape of the rows measured before they existed.
        f"evaluation: {{at: {at}, random_beyond: []}}\n"
    )
    path = folder / "config.yaml"
    path.write_text(text)
    return path


def parse_jobs(output: str) -> int:
    """The planned job count: the `total` row of the last "Job stats" table."""
    totals = re.findall(r"^total\s+(\d+)\s*$", output, flags=re.M)
    if not totals:
        raise RuntimeError("no 'Job stats' total in the dry run's output:\n" + output[-3000:])
    return int(totals[-1])


def dry_run(rounds: int, args: argparse.Namespace, floor_jobs: int | None = None) -> Timing:
    """Time the plan of `rounds` rounds; with floor_jobs, the minimal workflow of that many jobs."""
    with tempfile.TemporaryDirectory(prefix=f"asvp-plan{rounds}-") as tmp:
        folder = Path(tmp)
        if floor_jobs is None:
            snakefile = args.snakefile.resolve()
            config = write_config(folder, rounds, args.budget, args.eval, args.pool)
        else:
            snakefile = folder / "Snakefile"
            snakefile.write_text(FLOOR_SNAKEFILE)
            config = folder / "config.yaml"
            config.write_text(f"jobs: {floor_jobs - 1}\nlength: {rounds}\n")  # - 1: rule all
        python = [sys.executable]
        if args.profile and floor_jobs is None:
            python += ["-m", "cProfile", "-o", str(Path(args.profile).resolve())]
        command = [
            *python, "-m", "snakemake", "-s", str(snakefile), "-d", str(folder / "wd"),
            "--configfile", str(config), "-n", "--cores", str(args.cores), "--quiet", "rules",
            *([] if floor_jobs is not None else [part for extra in args.extra for part in shlex.split(extra)]),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        startup = float("nan")
        lines = []
        with subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if DAG_LINE in line and startup != startup:
                    startup = time.perf_counter() - start
                lines.append(line)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        output = "".join(lines)
        if proc.returncode != 0:
            raise RuntimeError(f"dry run of {rounds} rounds failed ({proc.returncode}):\n{output[-3000:]}")
        shown = ["python", *command[1:]]
        shown[shown.index(str(folder / "wd"))] = "<tmp>/wd"
        shown[shown.index(str(config))] = "<tmp>/config.yaml"
        return Timing(rounds, parse_jobs(output), seconds, startup, cpu, shlex.join(shown))


def table(timings: list[Timing], args: argparse.Namespace) -> str:
    now = dt.datetime.now().strftime("%Y-%m-%dT%H:%M")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    machine = f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()}, load {load})"
    version = importlib.metadata.version("snakemake")
    snakefile = args.snakefile.resolve()
    workflow = "" if snakefile == SNAKEFILE else f" (workflow: {snakefile}, not this checkout's)"
    evaluated = "every round" if args.eval == "all" else "the last round"
    rows = [
        f"## {now} planning on {machine}",
        "",
        f"Command: `python benchmarks/planning.py {shlex.join(args.argv)}` "
        f"(Snakemake {version}; best of {args.repeats}; each plan: one seed, random + svpp + asvp, margin, "
        f"budget {args.budget} per round, evaluated at {evaluated})",
        "",
        f"Dry run: `{timings[0].command}`{workflow}",
        "",
        "| date | machine | rounds | jobs | seconds | CPU s | start-up (s) | DAG + summary (s) | ms per job "
        "| ms per round |" + (" floor (s) | ours / floor |" if args.floor else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if args.floor else ""),
    ]
    for t in timings:
        target = f" (target <= {TARGET_SECONDS:g})" if t.rounds == 900 and args.eval == "last" else ""
        rows.append(
            f"| {now} | {platform.node()} | {t.rounds} | {t.jobs} | {t.seconds:.1f}{target} | {t.cpu:.1f} "
            f"| {t.startup:.1f} | "
            f"{t.seconds - t.startup:.1f} | {1000 * (t.seconds - t.startup) / t.jobs:.2f} | "
            f"{1000 * (t.seconds - t.startup) / t.rounds:.1f} |"
            + (f" {t.floor.seconds:.1f} | {t.seconds / t.floor.seconds:.2f} |" if t.floor else "")
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> list[Timing]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, nargs="+", default=[100, 900], help="plan lengths to time")
    parser.add_argument("--repeats", type=int, default=1, help="dry runs per length; the best is kept")
    parser.add_argument("--budget", type=int, default=10, help="labels per round")
    parser.add_argument("--pool", type=int, default=10000, help="data.pool_subset (must exceed rounds x budget)")
    parser.add_argument("--eval", choices=["last", "all"], default="last",
                        help="evaluation.at: the last round only (default) or every round")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--snakefile", type=Path, default=SNAKEFILE,
                        help="workflow to plan (default: this checkout's; e.g. a `git archive` snapshot)")
    parser.add_argument("--extra", action="append", default=[],
                        help="more snakemake arguments, e.g. --extra=--rerun-triggers=mtime (repeatable)")
    parser.add_argument("--profile", help="run the dry run under cProfile, writing this file (one length)")
    parser.add_argument("--floor", action="store_true",
                        help="also time a minimal workflow of as many jobs (Snakemake's own floor)")
    parser.add_argument("--out", type=Path, help="append the table to this markdown file (else print only)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.profile and (len(args.rounds) > 1 or args.repeats > 1):
        parser.error("--profile times one dry run: give one --rounds and --repeats 1")

    timings = []
    for rounds in args.rounds:
        runs = [dry_run(rounds, args) for _ in range(args.repeats)]
        best = min(runs, key=lambda t: t.seconds)
        if args.floor:
            best.floor = min((dry_run(rounds, args, floor_jobs=best.jobs) for _ in range(args.repeats)),
                             key=lambda t: t.seconds)
            if best.floor.jobs != best.jobs:
                raise RuntimeError(f"the floor workflow planned {best.floor.jobs} jobs, not {best.jobs}")
        floor = f"; floor {best.floor.seconds:.1f} s" if best.floor else ""
        print(f"{rounds} rounds: {best.jobs} jobs, {best.seconds:.1f} s, {best.cpu:.1f} CPU s "
              f"(start-up {best.startup:.1f} s){floor}", file=sys.stderr, flush=True)
        timings.append(best)
    text = table(timings, args)
    print(text, end="")
    if args.out:
        with open(args.out, "a") as handle:
            handle.write("\n" + text)
    return timings


if __name__ == "__main__":
    main()
