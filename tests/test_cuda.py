"""The CUDA paths: mixed-precision fine-tune steps (bf16 and fp16 with its gradient scaler),
channels_last, pinned-memory loading, the GPU ranking, NCCL data parallelism on the GPUs present,
and a CUDA fine-tune resumed on the CPU and back. Skipped without CUDA; run by
benchmarks/gpu_check.sh on a GPU machine (`pytest -m cuda`).

Only APIs of torch 2.4 and later (torch.amp.GradScaler("cuda")); the GPU machines have 2.11.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from asvp import distributed
from asvp.batching import iterate_batches
from asvp.extraction import image_batches
from asvp.recipes import Stage, TrainRecipe
from asvp.training import Classifier, train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)")]

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
NUM_CLASSES = 3
N_TRAIN, BATCH = 32, 8
FT = TrainRecipe("ft", (Stage("ft", 2, 0.05, 0.1, 1e-4, "step", (1,)),), BATCH)


class TinyBackbone(nn.Module):
    feature_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.proj = nn.Linear(16, self.feature_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.relu(self.bn(self.conv(images))).mean((2, 3)))


class Images(Dataset):
    """(image, label, position) per item: the DataLoader path, which pins memory on CUDA."""

    def __init__(self, n: int) -> None:
        generator = torch.Generator().manual_seed(n)
        self.images = torch.randn(n, 3, 16, 16, generator=generator)
        self.labels = torch.arange(n) % NUM_CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.images[index], self.labels[index], index


def _model() -> Classifier:
    torch.manual_seed(0)
    return Classifier(TinyBackbone(), NUM_CLASSES)


def _quiet(_: str) -> None:
    """A log that pickles (sent to the DDP processes)."""


def _finite_state(model: nn.Module) -> bool:
    return all(torch.isfinite(v.float()).all() for v in model.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp16-scaled"])
def test_mixed_precision_fine_tune_steps_learn_and_stay_finite(bf16: bool, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if bf16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    # fp16 (with the gradient scaler) is what GPUs without bf16 get: force it on this one.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    model = _model()
    history = train(model, Images(N_TRAIN), FT, seed=0, device=CUDA, checkpoint=tmp_path / "c.pt",
                    fingerprint="fp", log=_quiet)
    assert next(model.parameters()).device.type == "cuda"
    assert all(np.isfinite(h["loss"]) for h in history) and _finite_state(model)
    # Parameters stay float32 under autocast: only the arithmetic is half precision.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert history[-1]["loss"] < history[0]["loss"] * 1.5


def test_fine_tuned_model_is_channels_last_on_cuda(tmp_path: Path) -> None:
    model = _model()
    train(model, Images(N_TRAIN), FT, seed=0, device=CUDA, checkpoint=tmp_path / "c.pt", fingerprint="fp", log=_quiet)
    assert model.backbone.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_loaders_pin_host_memory_for_cuda() -> None:
    dataset = Images(N_TRAIN)
    images, labels = next(iterate_batches(dataset, [np.arange(BATCH)], 0, CUDA, seed=0))
    assert images.is_pinned() and labels.is_pinned()
    assert next(image_batches(dataset, 0, BATCH, device=CUDA)).is_pinned()
    assert not next(image_batches(dataset, 0, BATCH, device=CPU)).is_pinned()


def test_gpu_ranking_orders_by_free_memory_and_pins_the_least_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    ranking = distributed.gpus_by_free_memory()
    free = [torch.cuda.mem_get_info(i)[0] for i in ranking]
    assert sorted(ranking) == list(range(torch.cuda.device_count()))
    assert free == sorted(free, reverse=True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert distributed.pin_least_loaded_gpus(torch.cuda.device_count()) == list(range(torch.cuda.device_count()))
    if torch.cuda.device_count() > 1:
        chosen = distributed.pin_least_loaded_gpus(1)
        assert chosen == [ranking[0]]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == str(ranking[0])


def test_data_parallel_fine_tune_with_nccl_on_every_gpu(tmp_path: Path) -> None:
    world_size = torch.cuda.device_count()
    if world_size < 2:
        pytest.skip(f"NCCL data parallelism needs 2 GPUs, this machine has {world_size}")
    assert distributed.backend_for(CUDA, world_size) == "nccl"
    single, parallel = _model(), _model()
    train(single, Images(N_TRAIN), FT, seed=0, device=CUDA, checkpoint=tmp_path / "one.pt", fingerprint="fp", log=_quiet)
    history = train(parallel, Images(N_TRAIN), FT, seed=0, device=CUDA, checkpoint=tmp_path / "ddp.pt",
                    fingerprint="fp", log=_quiet, world_size=world_size)
    assert len(history) == FT.stages[0].epochs and _finite_state(parallel)
    for key, value in single.state_dict().items():
        if value.is_floating_point():  # autocast rounding, amplified by training: loose
            torch.testing.assert_close(parallel.state_dict()[key].float(), value.float(), rtol=0.1, atol=0.05)


def test_nccl_backend_is_chosen_for_the_gpus_present() -> None:
    assert distributed.backend_for(CUDA, 1) == "nccl"
    assert torch.distributed.is_nccl_available()


class Killed(Exception):
    """Stands in for a job killed mid-fine-tune."""


def _kill_at(text: str, lines: list[str]):
    """A log that records its lines and raises at the first containing `text`. The loop logs an
    epoch before checkpointing it, so killing at "epoch k/" leaves the checkpoint of epoch k-1."""
    def log(line: str) -> None:
        lines.append(line)
        if text in line:
            raise Killed(line)
    return log


def test_cuda_fine_tune_resumes_on_the_cpu_and_back_on_cuda(tmp_path: Path) -> None:
    checkpoint = tmp_path / "c.pt"
    recipe = TrainRecipe("ft", (Stage("ft", 3, 0.05, 0.1, 1e-4, "step", ()),), BATCH)
    lines: list[str] = []
    with pytest.raises(Killed):  # epoch 1 on CUDA: the checkpoint holds CUDA tensors
        train(_model(), Images(N_TRAIN), recipe, seed=0, device=CUDA, checkpoint=checkpoint, fingerprint="fp",
              log=_kill_at("epoch 2/3", lines))
    with pytest.raises(Killed):  # epoch 2 on the CPU from it
        train(_model(), Images(N_TRAIN), recipe, seed=0, device=CPU, checkpoint=checkpoint, fingerprint="fp",
              log=_kill_at("epoch 3/3", lines))
    model = _model()
    history = train(model, Images(N_TRAIN), recipe, seed=0, device=CUDA, checkpoint=checkpoint, fingerprint="fp",
                    log=lines.append)  # epoch 3 back on CUDA
    assert [line for line in lines if line.startswith("resuming")] == [
        f"resuming from {checkpoint}: stage 0, epoch 1", f"resuming from {checkpoint}: stage 0, epoch 2"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert _finite_state(model) and next(model.parameters()).device.type == "cuda"
