"""Can the SLURM executor plugin follow its jobs on this cluster?

The plugin (snakemake-executor-plugin-slurm 2.x) polls job states with `sacct` whenever `sacct`
is on PATH. On a cluster without accounting storage (AccountingStorageType=accounting_storage/none)
`sacct` only answers "Slurm accounting storage is disabled", and the plugin then waits for ever
after its jobs have finished, deaf to SIGTERM. So the head process asks `sacct` once before
submitting anything and stops with the setting that works: polling with `squeue`.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timedelta

from asvp.errors import ConfigError

ACCOUNTING_DISABLED = "accounting storage is disabled"


def accounting_disabled_answer() -> str | None:
    """sacct's answer when this cluster keeps no accounting, None when sacct works or is absent
    (the plugin then polls with squeue by itself)."""
    if shutil.which("sacct") is None:
        return None
    # An absolute start time: SLURM 22.05 rejects relative ones such as now-5min.
    start = f"{datetime.now() - timedelta(minutes=5):%Y-%m-%dT%H:%M:%S}"
    try:
        done = subprocess.run(["sacct", "-X", "--noheader", "--format=JobIdRaw", "--starttime", start],
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None  # slow accounting still answers the plugin, which retries
    answer = (done.stdout + done.stderr).strip()
    return answer if ACCOUNTING_DISABLED in answer.lower() else None


def require_job_status_source(executor: str | None, status_command: str | None) -> None:
    """Raise ConfigError before any submission when the SLURM executor would poll `sacct` on a
    cluster without accounting. executor: Snakemake's executor name (the job steps that run
    inside SLURM jobs are `slurm-jobstep` and never poll); status_command: the plugin's
    --slurm-status-command, None for its default (sacct when on PATH)."""
    if executor != "slurm" or status_command == "squeue":
        return
    answer = accounting_disabled_answer()
    if answer is None:
        return
    raise ConfigError(
        f"this SLURM cluster keeps no job accounting (sacct: {answer!r}), so the SLURM executor would "
        "wait for ever for its jobs. Poll with squeue instead: add the line `slurm-status-command: squeue` "
        "to your profile (profiles/slurm/config.yaml) or pass --slurm-status-command squeue "
        "(and keep the cluster's MinJobAge at 120 s or more, else the plugin goes back to sacct)")
