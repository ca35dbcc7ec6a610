"""Mixed precision on CUDA (extraction, proxy scoring, fine-tuning); a no-op elsewhere.

On a GPU, bf16/fp16 autocast roughly doubles convolution throughput and halves activation
memory; fine-tuning adds a gradient scaler for fp16 (see training.py); what is stored (features, probabilities) is converted back to float32 by the callers,
so file dtypes stay as configured. The CPU path is left exactly as it was (no autocast):
CPU results must stay bit-identical to earlier runs, and CPU bf16 is slower on most hosts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it (Ampere and later: no overflow risk), else fp16; None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def inference_autocast(device: torch.device) -> Iterator[None]:
    """Autocast for `device` (CUDA only); outputs may be bf16/fp16, so callers apply `.float()`."""
    dtype = autocast_dtype(device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type="cuda", dtype=dtype):
        yield
