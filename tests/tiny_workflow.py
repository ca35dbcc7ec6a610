"""The tiny end-to-end workflow the tests run: the real Snakefile on tests/configs/tiny.yaml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
METHODS = {"random", "standard", "svpp", "asvp"}


def snakemake(workdir: Path, *extra: str, configfiles: tuple[Path, ...] = (TINY,)) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2",
        # Tiny jobs are dominated by interpreter start-up: run two at a time, one thread each.
        "--max-threads", "1", "--configfile", *map(str, configfiles), *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONHASHSEED": "0"})


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) for every job a dry-run lists."""
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):", line.strip()):
            jobs.append((m.group(1), {}))
        elif (m := re.match(r"^wildcards: (.*)$", line.strip())) and jobs:
            jobs[-1][1].update(dict(part.split("=", 1) for part in m.group(1).split(", ")))
    return jobs
