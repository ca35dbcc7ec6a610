#!/usr/bin/env python3
"""A stand-in for SLURM's commands, for tests: sbatch, srun, squeue, sacct, scancel, sinfo,
scontrol, sacctmgr and sshare are symlinks to this file, put first on PATH.

sbatch records its arguments (one JSON line per call in $FAKE_SLURM_DIR/sbatch.jsonl), runs the
job script right away on this machine with SLURM's job variables set, stores the job's final
state, and prints the job id as `sbatch --parsable` does; sacct and squeue report those states
as the plugin asks for them (`id|state`); srun drops its options and runs its command. Nothing else is emulated.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM_DIR"])


def _option(args: list[str], name: str) -> str | None:
    for k, arg in enumerate(args):
        if arg == name and k + 1 < len(args):
            return args[k + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def sbatch(args: list[str]) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    counter = STATE / "next_id"
    job_id = int(counter.read_text()) if counter.exists() else 1000
    counter.write_text(str(job_id + 1))
    wrapped = _option(args, "--wrap")
    script = wrapped if wrapped is not None else sys.stdin.read()
    with open(STATE / "sbatch.jsonl", "a") as handle:
        handle.write(json.dumps({"id": job_id, "args": args}) + "\n")
    env = {**os.environ, "SLURM_JOB_ID": str(job_id), "SLURM_JOBID": str(job_id),
           "SLURM_CPUS_PER_TASK": _option(args, "--cpus-per-task") or "1", "SLURM_NTASKS": "1",
           "SLURM_JOB_NAME": _option(args, "--job-name") or "job"}
    output = (_option(args, "--output") or str(STATE / "slurm-%j.out")).replace("%j", str(job_id))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w") as log:
        code = subprocess.run(["sh", "-c", script] if wrapped is not None else ["sh", "-s"], input=None if wrapped else script,
                              text=True, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    (STATE / f"{job_id}.state").write_text("COMPLETED" if code == 0 else "FAILED")
    print(job_id)
    return 0


def srun(args: list[str]) -> int:
    k = 0
    while k < len(args) and args[k].startswith("-"):
        k += 1
    return subprocess.run(args[k:]).returncode


def job_states(args: list[str]) -> int:
    """`id|state` per job: the answer to the plugin's sacct --parsable2 and squeue --format=%i|%T."""
    for path in sorted(STATE.glob("*.state")):
        print(f"{path.stem}|{path.read_text()}")
    return 0


def main() -> int:
    name, args = Path(sys.argv[0]).name, sys.argv[1:]
    if name == "sbatch":
        return sbatch(args)
    if name == "srun":
        return srun(args)
    if name in ("sacct", "squeue"):
        return job_states(args)
    if name == "sinfo":
        print("cpu*\ngpu")
    elif name in ("sacctmgr", "sshare"):
        print(os.environ.get("FAKE_SLURM_ACCOUNT", "test_account"))
    elif name == "scontrol" and args[:2] == ["show", "config"]:
        print("MinJobAge = 300 sec")
    # scancel and the rest: nothing to say
    return 0


if __name__ == "__main__":
    sys.exit(main())
