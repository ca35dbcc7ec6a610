"""A step's own benchmark record, for jobs that run several steps.

The simulated oracle's selection job of a round trains the proxy, selects, labels and (ASVP)
decides in one job, so that a long run plans and schedules few jobs (900 rounds are 3,600 jobs
instead of 9,000). Snakemake's `benchmark:` would time that job as a whole; the paper's
time model (sec. 6.4) needs each stage apart. So each step adds its own row to the job's
`round{r}/benchmarks/select_steps.tsv`: the columns of Snakemake's benchmark files (what a step
cannot measure is NA) and `step`; the first step of the job replaces the file, the later ones
append (`asvp --same-job`), so an earlier failed attempt leaves no row. The report reads a row per
step there as it reads a rule's benchmark file (`asvp.tables.stage_seconds`). One file and one
log per job, not one per step: every file a job declares costs the planning of a long run.
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import sys

from asvp.atomic import write_text
from asvp.errors import AsvpError

COLUMNS = ("s", "h:m:s", "max_rss", "max_vms", "max_uss", "max_pss", "io_in", "io_out", "mean_load", "cpu_time", "step")


def stage_of_command(command: str) -> str:
    """The stage a CLI command's time counts for: the names of the rules' benchmark files."""
    from asvp.cli import COMMANDS

    return COMMANDS[command].stage


def write_step_benchmark(path: str | os.PathLike[str], step: str, seconds: float, append: bool = False) -> None:
    """Record one step's wall seconds, peak resident memory (MB) and CPU seconds in `path`.

    The wall time is the step's own (from the CLI's start), without the interpreter's start-up,
    which Snakemake's benchmark counts: about 0.1-0.3 s more per job there.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ru_maxrss is KiB on Linux, bytes on macOS.
    max_rss_mb = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    cpu = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
    values = {"s": f"{seconds:.4f}", "h:m:s": str(dt.timedelta(seconds=round(seconds))), "max_rss": f"{max_rss_mb:.2f}",
              "cpu_time": f"{cpu:.2f}", "step": step}
    row = "\t".join(values.get(column, "NA") for column in COLUMNS) + "\n"
    header = "\t".join(COLUMNS) + "\n"
    earlier = ""
    if append and os.path.exists(path):
        with open(path) as handle:
            earlier = handle.read()
        if not earlier.startswith(header):
            raise AsvpError(f"{path}: not a step timing file (its header is not {header.strip()!r}); delete it and "
                            "rerun the job")
    write_text(path, (earlier or header) + row)
