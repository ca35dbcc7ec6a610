"""Data parallelism over the GPUs (or CPU processes) of one job: torch DistributedDataParallel.

Issue 11: a fine-tune or a feature extraction given N GPUs should use all N and give what one
process gives, up to float rounding. `launch` runs a function in N spawned processes with a
process group (NCCL on GPUs, gloo on the CPU); the training loop (asvp.training) and the
extractor (asvp.extraction) call the helpers below and stay one loop each.

Why results match a single process:
  * every rank builds the same global batch (same seeded positions, same augmentation draws)
    and keeps its contiguous shard, so the union of the shards is the single-process batch;
  * DDP averages the shards' gradients, and each shard's loss is weighted by its share of the
    batch, so the averaged gradient is the gradient of the global mean loss;
  * BatchNorm statistics are those of the global batch: torch's SyncBatchNorm on CUDA. On the
    CPU torch 2.14.1 has none (SyncBatchNorm raises "expected input tensor to be on GPU" and
    aten::batch_norm_stats has no CPU kernel), so `CpuSyncBatchNorm` below all-reduces the sums
    itself, with gradients flowing back through the all-reduce as SyncBatchNorm's do.
"""

from __future__ import annotations

import functools
import os
import pickle
import socket
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from asvp.errors import ConfigError, DataError

RESULT_FILE = "result.pt"


# --------------------------------------------------------------------------- launching
def backend_for(device: torch.device | str, world_size: int) -> str:
    """NCCL for a CUDA device with a GPU per rank, gloo for the CPU (one process per rank)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "gloo"
    visible = torch.cuda.device_count()
    if world_size > visible:
        raise ConfigError(f"world_size {world_size} needs one GPU per process, but {visible} are visible; "
                          f"lower world_size to at most {visible} or run on the CPU")
    return "nccl"


def job_processes(device: torch.device, gpus: int) -> int:
    """How many processes a fine-tune or an extraction job runs: one per GPU it was given.

    `gpus` is the job's `gpu` resource (config `gpus_per_job`). On the CPU a job runs one
    process whatever it asked for: gloo processes would only share the same cores. A job given
    more GPUs than it can see stops before training, with the fix, instead of silently using fewer.
    """
    if device.type != "cuda" or gpus <= 1:
        return 1
    visible = torch.cuda.device_count()
    if gpus > visible:
        raise ConfigError(f"this job was given gpu={gpus} (gpus_per_job) but sees {visible} GPU(s) "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                          f"lower gpus_per_job to at most {visible} or ask the scheduler for {gpus} GPUs")
    return gpus


def gpus_by_free_memory() -> list[int]:
    """Visible GPU indices, most free memory first (ties: lowest index first)."""
    free = [torch.cuda.mem_get_info(index)[0] for index in range(torch.cuda.device_count())]
    return sorted(range(len(free)), key=lambda index: -free[index])


def pin_least_loaded_gpus(count: int) -> list[int]:
    """Make the `count` visible GPUs with the most free memory the spawned ranks' cuda:0..count-1.

    Several multi-GPU jobs side by side on one machine (profiles/local-gpu) would otherwise all
    start their ranks on cuda:0..count-1. Ranks are spawned, so they read CUDA_VISIBLE_DEVICES
    afresh; under SLURM the variable already lists the job's own GPUs and this picks among them.
    Returns the chosen indices, in the numbering this process sees.
    """
    visible = torch.cuda.device_count()
    if count >= visible:
        return list(range(visible))
    chosen = sorted(gpus_by_free_memory()[:count])
    names = _visible_names_at_start(visible)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(names[index] for index in chosen)
    return chosen


@functools.cache
def _visible_names_at_start(visible: int) -> tuple[str, ...]:
    """The GPU names behind this process's numbering, fixed when CUDA starts: read once, since
    the variable is rewritten for the ranks of each launch (a refresh launches twice)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return tuple(name.strip() for name in listed.split(",")) if listed else tuple(str(index) for index in range(visible))


def require_world_size(world_size: int) -> None:
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size must be a whole number of processes, at least 1; got {world_size!r}")


def launch(fn: Callable[..., Any], world_size: int, *args: Any, backend: str | None = None) -> Any:
    """Run `fn(rank, world_size, *args)` in `world_size` processes; return rank 0's result.

    world_size 1 calls `fn(0, 1, *args)` here, with no process group (the single-process path
    is the one it always was). Otherwise the processes are spawned (CUDA cannot be forked),
    so `fn` and `args` must pickle: module-level functions, no lambdas. The default backend is
    NCCL when CUDA has a GPU per rank, else gloo. An exception in a rank is raised here as the
    same exception (DataError stays DataError for the CLI), caused by the rank's traceback.
    """
    require_world_size(world_size)
    if world_size == 1:
        return fn(0, 1, *args)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and world_size <= torch.cuda.device_count() else "gloo"
    if backend == "nccl":
        pin_least_loaded_gpus(world_size)
    # The ranks share the cores this process was given, as one process would have used them.
    threads = max(1, torch.get_num_threads() // world_size)
    # Plain pickle, not torch.multiprocessing's: that one moves every tensor into shared memory,
    # so the ranks would update one set of weights together (and /dev/shm is small in containers).
    try:
        payload = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise TypeError(f"launch: the function and arguments of a {world_size}-process run are sent to new "
                        f"processes and must pickle (module-level functions, no lambdas or local classes): {error}") from error
    with tempfile.TemporaryDirectory(prefix="asvp-ddp-") as scratch:
        spawn_args = (payload, world_size, backend, _free_port(), threads, scratch)
        context = mp.start_processes(_run_rank, args=spawn_args, nprocs=world_size, join=False, start_method="spawn")
        try:
            while not context.join():
                pass
        except ProcessException as error:
            _reraise(error, Path(scratch), world_size)
        return torch.load(Path(scratch) / RESULT_FILE, map_location="cpu", weights_only=False)


def _free_port() -> int:
    """A TCP port free now on the loopback (rank 0's store binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_rank(rank: int, payload: bytes, world_size: int, backend: str, port: int, threads: int, scratch: str) -> None:
    """One rank: join the group, run `fn`, hand rank 0's result (or any rank's error) to the parent."""
    fn, args = pickle.loads(payload)  # this rank's own copy of the model and data
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(threads)
    device_id = torch.device("cuda", rank) if backend == "nccl" else None
    dist.init_process_group(backend, rank=rank, world_size=world_size, device_id=device_id)
    try:
        result = fn(rank, world_size, *args)
        if rank == 0:
            torch.save(result, Path(scratch) / RESULT_FILE)
        dist.barrier()  # no rank tears the group down while another still talks to it
    except BaseException as error:
        _record_error(Path(scratch) / f"error{rank}.pkl", error)
        raise  # the group is left as is: peers may be blocked in a collective, and the parent ends them
    dist.destroy_process_group()


def _record_error(path: Path, error: BaseException) -> None:
    try:
        payload = pickle.dumps(error)
        pickle.loads(payload)  # an exception whose class the parent cannot rebuild travels as text
    except Exception:
        payload = None
    with open(path, "wb") as handle:
        pickle.dump((payload, f"{type(error).__name__}: {error}", traceback.format_exc()), handle)


def _reraise(error: ProcessException, scratch: Path, world_size: int) -> None:
    """Raise the failed rank's own exception, caused by its traceback; a killed rank says how it died."""
    where = f"rank {error.error_index} of {world_size}"
    record = scratch / f"error{error.error_index}.pkl"
    if not record.exists():
        raise RuntimeError(f"{where}: {str(error).strip()}") from error
    payload, summary, child_traceback = pickle.loads(record.read_bytes())
    cause = RuntimeError(f"{where} failed:\n{child_traceback}")
    if payload is not None:
        raise pickle.loads(payload) from cause
    raise RuntimeError(f"{where} failed with {summary}") from cause


# --------------------------------------------------------------------------- inside a rank
def current_rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def current_world_size() -> int:
    """Processes in the group (1 outside one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that logs and writes checkpoints and outputs."""
    return current_rank() == 0


def local_device() -> torch.device:
    """This rank's device: its own GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", current_rank())
    return torch.device("cpu")


def part(n: int, index: int, parts: int) -> slice:
    """Contiguous slice `index` of `parts` near-equal parts of range(n) (np.array_split's sizes)."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def part_sizes(n: int, parts: int) -> list[int]:
    """Lengths of the `parts` slices `part` cuts range(n) into."""
    return [len(range(n)[part(n, index, parts)]) for index in range(parts)]


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sums over the ranks, in float64 so per-rank totals (losses, counts) lose nothing."""
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's `value` on every rank (where a resumed file says to start, which only rank 0 reads)."""
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def gather_rows(block: torch.Tensor, counts: Sequence[int]) -> np.ndarray | None:
    """Concatenate every rank's (counts[r], D) block in rank order on rank 0 (None elsewhere).

    Blocks may differ by a row (the last chunk of a split); collectives need equal shapes, so
    each is padded to the largest and trimmed after.
    """
    width = max(counts)
    padded = block.new_zeros((width, *block.shape[1:]))
    padded[: len(block)] = block
    gathered = [torch.empty_like(padded) for _ in counts] if is_main() else None
    dist.gather(padded, gathered, dst=0)
    if gathered is None:
        return None
    return torch.cat([rows[:count] for rows, count in zip(gathered, counts)]).cpu().numpy()


def require_shardable(batch_size: int, n: int, world_size: int) -> None:
    """Refuse a fine-tune whose batches cannot be split across the processes before starting them."""
    if batch_size % world_size:
        raise ConfigError(f"finetune batch_size {batch_size} does not divide by world_size {world_size}: "
                          f"every process takes an equal share of each batch; use a multiple of {world_size}")
    if min(batch_size, n) < world_size:
        raise DataError(f"{n} labelled images cannot be shared by {world_size} processes; "
                        f"lower world_size to at most {n}")


@dataclass(frozen=True)
class Shards:
    """How one rank of a data-parallel fine-tune sees each global batch: its contiguous shard."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor[part(len(tensor), self.rank, self.world_size)]

    def loss_weight(self, batch: int) -> float:
        """Weight of this shard's mean loss so DDP's average of the ranks' gradients is the batch mean's.

        1.0 for equal shards; a batch of n < world_size * k images (a labelled set smaller than
        one batch) splits unevenly, and unweighted the ranks' means would count alike.
        """
        size = part(batch, self.rank, self.world_size)
        return (size.stop - size.start) * self.world_size / batch

    def wrap(self, model: nn.Module) -> DistributedDataParallel:
        """DDP over `model` (its trainable parameters as they are now: build one per stage).

        forward_sync_buffers=False: synchronised BatchNorm keeps the running statistics identical
        on every rank already; rebroadcasting them before each forward would only cost time.
        """
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def sum(self, *values: float) -> list[float]:
        return all_reduce_sum(values, self.device)


# --------------------------------------------------------------------------- BatchNorm
class _AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) whose backward all-reduces the gradient: every rank's loss depends on every
    rank's inputs through the shared statistics (torch.distributed.nn's version is deprecated)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _AllReduceSum.apply(grad)


class CpuSyncBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all ranks, for CPU tensors (gloo).

    Two all-reduces per call: the sums (and counts) for the mean, then the squared deviations
    from that mean for the variance, the two-pass form. In float64, as torch's CPU BatchNorm
    accumulates (acc_type<float> is double on the CPU). Measured on pretrained MobileNetV2 at
    32 px, 16 images: pre-activations of 1 process are 1.5e-5 (of their scale) from float64,
    of 2 processes 2.3e-5 in float64 but 4.2e-5 in float32, enough there to flip one ReLU6
    unit and move a late layer's gradient by 3.5 %. Autograd gives the backward (its
    all-reduces are in `_AllReduceSum`). Outside a process group, or in eval mode, it is plain
    BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and current_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        x = input.double()
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.size(1)], dtype=x.dtype, device=x.device)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = float(totals[-1].detach())
        if n < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got {int(n)} over all ranks")
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.double().view(shape) + self.bias.double().view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():  # the running variance is unbiased, as F.batch_norm's
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_((var.detach() * (n / (n - 1))).to(self.running_var.dtype),
                                                       alpha=factor)
        return out.to(input.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm in `module` computing global-batch statistics; same parameters, buffers, keys.

    CUDA: torch's SyncBatchNorm. CPU: `CpuSyncBatchNorm` (torch has no CPU SyncBatchNorm). The
    state_dict keys are BatchNorm's, so checkpoints move between 1 and N processes unchanged.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        synced = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats)
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias
        synced.running_mean, synced.running_var = module.running_mean, module.running_var
        synced.num_batches_tracked = module.num_batches_tracked
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, sync_batchnorm(child, device))
    return module
