"""Where torch runs, and what importing it costs a step.

`import torch` alone takes 3-5 s on a busy 2-core machine: more than the whole work of
labelling, deciding or a pass-through refresh, so those steps never import it, and the steps
that do record how long it took (the CLI prints it; benchmarks/round_overhead.py reads it).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IMPORT_SECONDS: dict[str, float] = {"torch": 0.0}
JOB_THREADS: list[int] = []  # the job's CPU threads, when the CLI was given them (--threads)


def import_torch() -> None:
    """Import torch (timed) and set its CPU threads to the job's."""
    started = time.perf_counter()
    import torch

    IMPORT_SECONDS["torch"] += time.perf_counter() - started
    if JOB_THREADS:
        torch.set_num_threads(JOB_THREADS[0])


def resolve_device(name: str) -> torch.device:
    """'auto' uses CUDA when present, else the CPU.

    With several GPUs visible, the one with the most free memory: jobs that Snakemake runs side
    by side (profiles/local-gpu, one `gpu` resource each) would otherwise all land on cuda:0.
    """
    import torch

    from asvp.errors import ConfigError

    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is 'cuda' but no CUDA device is visible; set device: auto or cpu")
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda"):
        if torch.cuda.device_count() > 1:
            from asvp.distributed import gpus_by_free_memory

            return torch.device(f"cuda:{gpus_by_free_memory()[0]}")
        return torch.device("cuda")
    return torch.device(name)


def job_processes(device_name: str, gpus: int) -> int:
    """Data-parallel processes for a fine-tune or extraction job: one per GPU it was given on CUDA."""
    from asvp import distributed

    processes = distributed.job_processes(resolve_device(device_name), gpus)
    if processes > 1:
        print(f"data-parallel over {processes} GPUs (gpus_per_job)")
    return processes
