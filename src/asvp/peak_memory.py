"""Peak memory of a block of code in this process: what a job doing the same work needs.

Measured in-process for several blocks one after another (the backbone advisor's candidates), so
each block must start from a clean slate: see `_release_freed_memory` for what glibc otherwise
carries over from one block to the next.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _lifetime_peak_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MEASURING_THRESHOLD = 128 * 1024  # glibc's initial threshold, held fixed while measuring
# Afterwards: the ceiling glibc's own dynamic threshold reaches on 64-bit systems. Left at 128 KiB,
# every large tensor is mapped and unmapped anew: fine-tunes run after a measurement spent as many
# seconds in the kernel as in their own code (8.7 of 17.6 CPU minutes).
RUNNING_THRESHOLD = 32 * 1024 * 1024


def _set_mmap_threshold(size: int) -> Any:
    """glibc's libc with its mmap threshold set to `size`, or None where it is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, size)
    except (OSError, AttributeError):  # not glibc: the peak may read off by tens of MB
        return None
    return libc


def _release_freed_memory() -> None:
    """Hand memory that earlier blocks freed back to the system, and keep it so: glibc keeps
    freed memory for reuse, and raises its mmap threshold after large frees, so that a block
    measured after a larger one read 40-60 MB off (low where it reused memory, high where its
    tensors fragmented the heap). A fixed 128 KiB threshold maps every tensor of that size or more
    on its own and unmaps it when freed, so the resident set follows the live tensors."""
    import gc

    gc.collect()
    libc = _set_mmap_threshold(MEASURING_THRESHOLD)
    if libc is not None:
        libc.malloc_trim(0)


def _proc_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


@contextlib.contextmanager
def peak_memory(device: Any) -> Iterator[dict[str, Any]]:
    """The block's peak memory above its start, in bytes: CUDA's max allocated on a GPU; on a CPU
    the resident-set high-water mark, reset first (Linux clear_refs) so that an earlier, larger
    block does not hide this one's peak. Where it cannot be reset, the process's lifetime peak
    is used and the delta is a lower bound (`kind` says which)."""
    import torch

    found: dict[str, Any] = {}
    _release_freed_memory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield found
        found.update(bytes=torch.cuda.max_memory_allocated(device) - base, kind="cuda max allocated")
        _set_mmap_threshold(RUNNING_THRESHOLD)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    base = _proc_kib("VmRSS")
    if base is None:
        base, reset = _lifetime_peak_kib(), False
    yield found
    peak = _proc_kib("VmHWM") if reset else _lifetime_peak_kib()
    _set_mmap_threshold(RUNNING_THRESHOLD)
    found.update(bytes=max(0, (peak or base) - base) * 1024,
                 kind="RSS high-water mark" if reset else "RSS high-water mark (lower bound: not resettable)")
