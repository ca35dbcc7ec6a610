"""Tests for asvp.distributed: a fine-tune and an extraction in 2 processes (gloo, CPU) equal 1 process.

Tolerances. A 2-process run does the same arithmetic in another order (the batch gradient is the
average of two shard gradients, BatchNorm sums come from all-reduces), so it differs from one
process by rounding, amplified by training. How much training amplifies one rounding was
measured on the run below: one process with its initial weights scaled by (1 + 6e-8), about one
float32 rounding, ends with parameters 5.9e-5 (of each tensor's largest entry) and per-epoch
losses 6.3e-6 (relative) away; 2 processes end 4.1e-5 and 4.3e-6 away, the same order. Hence
PARAM_RTOL 1e-3 and LOSS_RTOL 1e-4, >= 20x the observed differences and still far below what a
real mistake costs: BatchNorm on each shard instead of the whole batch moves parameters by
4.6 (x their scale) and losses by 5.9 (relative). Features are one forward pass, no training:
FEATURE_RTOL 1e-5 (observed: bit-identical).

Every `world_size=2` call spawns 2 processes that import torch (~5-8 s on a busy 2-core machine),
so the tests share a few such runs.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from asvp import distributed
from asvp.errors import ConfigError
from asvp.extraction import SplitInput, extract_features
from asvp.features import partial_path
from asvp.recipes import Stage, TrainRecipe
from asvp.training import Classifier, train

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CPU = torch.device("cpu")
NUM_CLASSES = 3
PARAM_RTOL, LOSS_RTOL, FEATURE_RTOL = 1e-3, 1e-4, 1e-5
N_TRAIN, BATCH = 48, 8  # 6 steps per epoch
# Every kind of stage the loop has, in one run: the L-BFGS probe (LP-FT's default), an SGD linear
# probe (lp_solver: sgd; its own DDP wrapper over the head) and FT with a milestone; each probe
# is preceded by a BatchNorm recalibration, and FT is followed by one.
RECIPE = TrainRecipe("lpft", (Stage("probe", 1, None, 0.1, 1e-3, "lbfgs"), Stage("lp", 1, None, 0.1, 0.0, "cosine"),
                              Stage("ft", 3, 0.05, 0.1, 1e-4, "step", (2,))), BATCH)
# Item fetches up to the end of FT epoch 1: recalibration, probe features, recalibration, LP epoch, FT epoch.
FETCHES_TO_FT_EPOCH_1 = 5 * N_TRAIN


class Interrupted(RuntimeError):
    """Stands in for a killed job."""


class TinyBackbone(nn.Module):
    """Conv -> BatchNorm2d -> ReLU -> pool -> Linear -> BatchNorm1d: both BatchNorm kinds, on (B, C, H, W) and (B, D)."""

    feature_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.proj = nn.Linear(8, self.feature_dim)
        self.norm = nn.BatchNorm1d(self.feature_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(images))).mean((2, 3))
        return self.norm(self.proj(x))


class TinyImages(Dataset):
    """(image, label, position) with a random flip drawn from the global torch RNG, as torchvision's transforms.

    `fail_at_fetch` raises on that (1-based) item fetch of this process, to kill training mid-run;
    augment=False is the eval-mode dataset an extraction reads.
    """

    def __init__(self, n: int, fail_at_fetch: int | None = None, augment: bool = True) -> None:
        generator = torch.Generator().manual_seed(n)
        self.labels = torch.arange(n) % NUM_CLASSES
        self.images = torch.randn(n, 3, 8, 8, generator=generator) + self.labels.view(-1, 1, 1, 1).float()
        self.fail_at_fetch = fail_at_fetch
        self.augment = augment
        self.fetches = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        self.fetches += 1
        if self.fetches == self.fail_at_fetch:
            raise Interrupted(f"killed at item fetch {self.fetches}")
        image = self.images[position]
        if self.augment and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, int(self.labels[position]), position


class BatchedImages(TinyImages):
    """The in-memory path: whole batches through `batch(positions)` (no per-item DataLoader)."""

    def batch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(np.asarray(positions, dtype=np.int64))
        return self.images[index], self.labels[index], index


def _quiet(_: str) -> None:
    """A log that pickles (it is sent to the processes)."""


def _model() -> Classifier:
    torch.manual_seed(0)
    return Classifier(TinyBackbone(), NUM_CLASSES)


def _train(dataset: Dataset, checkpoint: Path, world_size: int, recipe: TrainRecipe = RECIPE) -> tuple[Classifier, list]:
    model = _model()
    history = train(model, dataset, recipe, seed=0, device=CPU, checkpoint=checkpoint, fingerprint="fp", log=_quiet,
                    world_size=world_size)
    return model, history


def _relative_differences(a: Classifier, b: Classifier) -> dict[str, float]:
    """max |a - b| / max |a| for every float tensor of the state dicts (a scale-free float error)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return {key: float((sa[key] - sb[key]).abs().max() / sa[key].abs().max().clamp_min(1e-12))
            for key in sa if sa[key].is_floating_point()}


def _assert_same_run(reference: tuple[Classifier, list], other: tuple[Classifier, list], n: int = N_TRAIN) -> None:
    differences = _relative_differences(reference[0], other[0])
    assert max(differences.values()) < PARAM_RTOL, differences
    assert [(h["stage"], h["epoch"], h["steps"]) for h in reference[1]] == [(h["stage"], h["epoch"], h["steps"]) for h in other[1]]
    np.testing.assert_allclose([h["loss"] for h in other[1]], [h["loss"] for h in reference[1]], rtol=LOSS_RTOL)
    for mine, theirs in zip(other[1], reference[1]):
        assert abs(mine["train_accuracy"] - theirs["train_accuracy"]) <= 1 / n + 1e-12  # one near-tie may flip


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Classifier, list]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test here (torch_single_thread), for the module's reference run
    try:
        return _train(TinyImages(N_TRAIN), tmp_path_factory.mktemp("single") / "ckpt.pt", 1)
    finally:
        torch.set_num_threads(previous)


# --- training ------------------------------------------------------------------------------------


def test_two_processes_train_to_the_single_process_weights_losses_and_accuracies(
    single: tuple[Classifier, list], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "ckpt.pt"
    model, history = _train(TinyImages(N_TRAIN), checkpoint, 2)
    _assert_same_run(single, (model, history))
    assert [h["stage"] for h in history] == ["probe", "lp", "ft", "ft", "ft"]
    assert not model.training and all(p.requires_grad for p in model.parameters())
    assert type(model.backbone.bn) is nn.BatchNorm2d  # the caller's model keeps its modules
    # Rank 0 wrote the checkpoint of the last epoch, in the single-process format.
    state = torch.load(checkpoint, weights_only=False)
    assert (state["stage_index"], state["epoch"]) == (3, 0)
    assert state["model"].keys() == single[0].state_dict().keys()


def test_a_killed_two_process_fine_tune_raises_its_error_and_resumes_from_its_checkpoint(
    single: tuple[Classifier, list], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "ckpt.pt"
    kill_at = FETCHES_TO_FT_EPOCH_1 + 3  # in FT epoch 2; each rank fetches every image of each global batch
    with pytest.raises(Interrupted, match=f"killed at item fetch {kill_at}"):
        _train(TinyImages(N_TRAIN, fail_at_fetch=kill_at), checkpoint, 2)
    state = torch.load(checkpoint, weights_only=False)
    assert (state["stage_index"], state["epoch"]) == (2, 1)  # written after FT epoch 1
    resumed = _train(TinyImages(N_TRAIN), checkpoint, 1)
    _assert_same_run(single, resumed)


def test_two_processes_resume_a_single_process_checkpoint(single: tuple[Classifier, list], tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt.pt"
    with pytest.raises(Interrupted):
        _train(TinyImages(N_TRAIN, fail_at_fetch=FETCHES_TO_FT_EPOCH_1 + 3), checkpoint, 1)
    _assert_same_run(single, _train(TinyImages(N_TRAIN), checkpoint, 2))


def test_a_batch_size_that_does_not_divide_by_the_world_size_is_refused(tmp_path: Path) -> None:
    recipe = TrainRecipe("ft", (Stage("ft", 1, 0.05, 0.1, 1e-4),), 9)
    with pytest.raises(ConfigError, match="batch_size 9 does not divide by world_size 2.*multiple of 2"):
        train(_model(), TinyImages(N_TRAIN), recipe, seed=0, device=CPU, checkpoint=tmp_path / "c.pt", fingerprint="fp",
              log=_quiet, world_size=2)
    assert not (tmp_path / "c.pt").exists()


def test_a_labelled_set_smaller_than_a_batch_splits_unevenly_to_the_single_process_result(tmp_path: Path) -> None:
    """7 images, batch 8: every step's batch is the 7, split 4 + 3 (loss weights, uneven BatchNorm counts)."""
    recipe = TrainRecipe("ft", (Stage("ft", 3, 0.05, 0.1, 1e-4, "step", (2,)),), BATCH)
    one = _train(TinyImages(7), tmp_path / "one.pt", 1, recipe)
    two = _train(TinyImages(7), tmp_path / "two.pt", 2, recipe)
    _assert_same_run(one, two, n=7)


def test_uneven_shards_weight_their_losses_to_the_batch_mean() -> None:
    """A labelled set smaller than a batch (7 images, batch 8) splits 4 + 3: DDP's plain average
    of the two shard means would weight the 3 images as much as the 4."""
    losses = torch.arange(7, dtype=torch.float64)
    shards = [distributed.Shards(rank, 2, CPU) for rank in range(2)]
    averaged = sum(s.loss_weight(7) * s.shard(losses).mean() for s in shards) / 2
    assert [len(s.shard(losses)) for s in shards] == [4, 3]
    assert float(averaged) == pytest.approx(float(losses.mean()))
    assert distributed.part_sizes(5, 3) == [2, 2, 1] and distributed.part_sizes(1, 2) == [1, 0]


# --- extraction ----------------------------------------------------------------------------------


class FeatureNet(nn.Module):
    """An eval-mode backbone with BatchNorm running statistics, (B, 3, 8, 8) -> (B, 5).

    `fail_on_call` raises on that forward call of rank 0 (only: rank 0 has then written every chunk
    before it, while the other ranks wait for it in the next gather).
    """

    feature_dim = 5

    def __init__(self, fail_on_call: int | None = None) -> None:
        super().__init__()
        self.fail_on_call, self.calls = fail_on_call, 0
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.linear = nn.Linear(6, self.feature_dim)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on_call and distributed.is_main():
            raise Interrupted(f"killed during forward call {self.calls}")
        return self.linear(torch.relu(self.bn(self.conv(images))).mean((2, 3)))


def _splits() -> dict[str, SplitInput]:
    """A pool through the DataLoader and a test set through `batch`; sizes that split unevenly."""
    pool, test = TinyImages(21, augment=False), BatchedImages(7, augment=False)
    return {name: SplitInput(data, data.labels.numpy().astype(np.int64), [f"{name}{i}" for i in range(len(data))])
            for name, data in (("pool", pool), ("test", test))}


def _extract(out: Path, world_size: int, model: nn.Module | None = None) -> None:
    # chunks of 8 rows: pool 0-7, 8-15, 16-20 (ranks take 3 + 2 of the last); test 0-6 (4 + 3)
    extract_features(FeatureNet() if model is None else model, _splits(), out, attrs={"backbone": "tiny", "resolution": 8}, batch_size=4,
                     chunk_rows=8, world_size=world_size)


def _layout(handle: h5py.File) -> dict[str, object]:
    layout: dict[str, object] = {"attrs": dict(handle.attrs)}
    for split in ("pool", "test"):
        layout[f"{split}.attrs"] = dict(handle[split].attrs)
        for key, data in handle[split].items():
            layout[f"{split}/{key}"] = (data.shape, data.dtype, data.chunks, data.compression)
    return layout


def _assert_same_file(path: Path, reference: Path) -> None:
    with h5py.File(reference, "r") as one, h5py.File(path, "r") as two:
        assert _layout(two) == _layout(one)
        for split in ("pool", "test"):
            np.testing.assert_array_equal(two[split]["labels"][()], one[split]["labels"][()])
            np.testing.assert_array_equal(two[split]["sample_ids"][()], one[split]["sample_ids"][()])
            expected = one[split]["features"][()]
            np.testing.assert_allclose(two[split]["features"][()], expected, rtol=0, atol=FEATURE_RTOL * np.abs(expected).max())


@pytest.fixture(scope="module")
def single_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("extraction") / "one.h5"
    _extract(out, 1)
    return out


def test_a_two_process_extraction_writes_the_single_process_file(single_file: Path, tmp_path: Path) -> None:
    _extract(tmp_path / "two.h5", 2)
    _assert_same_file(tmp_path / "two.h5", single_file)
    assert not (tmp_path / "two.h5.partial").exists()


def test_a_killed_two_process_extraction_resumes_from_the_chunks_rank_0_wrote(single_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "features.h5"
    with pytest.raises(Interrupted, match="killed during forward call 2"):  # each rank: one forward per pool chunk
        _extract(out, 2, FeatureNet(fail_on_call=2))
    assert not out.exists()
    with h5py.File(partial_path(out), "r") as handle:
        assert int(handle["pool"].attrs["rows_done"]) == 8
    model = FeatureNet()
    _extract(out, 1, model)
    assert model.calls == 4 + 2  # pool rows 8-20 in batches of 4 (4, 4 | 4, 1), then the 7 test rows (4, 3)
    _assert_same_file(out, single_file)


# --------------------------------------------------------------------------- wiring into the jobs
def test_a_job_runs_one_process_per_gpu_it_was_given_on_cuda_and_one_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert distributed.job_processes(torch.device("cpu"), 4) == 1  # gloo ranks would only share the same cores
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert distributed.job_processes(torch.device("cuda"), 1) == 1
    assert distributed.job_processes(torch.device("cuda"), 4) == 4
    with pytest.raises(ConfigError, match="gpu=8 .*sees 4 GPU.*lower gpus_per_job to at most 4"):
        distributed.job_processes(torch.device("cuda"), 8)


def test_the_ranks_of_a_launch_get_the_gpus_with_the_most_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    free = {0: 1, 1: 40, 2: 3, 3: 30}  # GiB free; a job that started first holds GPUs 0 and 2
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (free[index] << 30, 80 << 30))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # the scheduler's numbering: this job's own four
    distributed._visible_names_at_start.cache_clear()
    assert distributed.pin_least_loaded_gpus(2) == [1, 3]
    assert torch.cuda.device_count() == 4 and distributed.os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"
    free.update({1: 2, 2: 50})  # a second launch in the same job (a refresh: fine-tune, then extraction)
    assert distributed.pin_least_loaded_gpus(2) == [2, 3]
    assert distributed.os.environ["CUDA_VISIBLE_DEVICES"] == "6,7"  # named from the job's first list
    distributed._visible_names_at_start.cache_clear()


def test_an_evaluate_job_given_two_gpus_fine_tunes_in_two_processes_to_the_one_process_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules pass `--gpus {resources.gpu}`; here the CPU stands in for a node with 2 GPUs (gloo).

    A small backbone lr: at 12 images and 32 px, MobileNetV2's train-mode BatchNorm over 8-image
    batches amplifies rounding, so that one process on 1 or on 2 threads already differs by 0.2 %
    in the second epoch's loss at lr 1e-4 (1e-6 at lr 1e-5; measured with the same fine-tune).
    Three steps on 12 images leave the model near chance (the divergence guard says so in both
    runs): this checks that the job is data-parallel and equal to one process, not that it learns
    (tests/test_convergence.py does that).
    """
    import json

    import pandas as pd

    from asvp import cli
    from asvp.config import validate_config
    from asvp.steps.features import define_pool

    config = validate_config({
        "experiment": "unit", "device": "cpu",
        "data": {"dataset": "fashion_mnist", "pool_subset": 40, "test_subset": 20, "resolution": 32},
        "finetune": {"epochs": 2, "batch_size": 8, "milestones": [], "lr_head": 0.01, "lr_backbone": 1e-5, "min_steps": 0}, "schedule": {"budgets": [12]},
    })
    data = tmp_path / "data"
    define_pool(config, data / "pool.csv", data / "test.csv", data / "dataset.json")
    pool = pd.read_csv(data / "pool.csv")
    labelled = pool.head(12).assign(pool_index=range(12), round=0)[["pool_index", "sample_id", "label", "round"]]
    labelled.to_csv(tmp_path / "labelled.csv", index=False)
    monkeypatch.setattr(distributed, "job_processes", lambda device, gpus: max(1, gpus))  # as CUDA with `gpus` GPUs
    excerpt = json.dumps({key: config[key] for key in ("data", "backbone", "finetune", "evaluation", "device")})
    metrics = {}
    for gpus in (0, 2):
        out = tmp_path / f"metrics_{gpus}.json"
        assert cli.main(["--threads", "2", "evaluate", "--gpus", str(gpus), "--config-json", excerpt, "--recipe", "ft",
                         "--pool", str(data / "pool.csv"), "--labelled", str(tmp_path / "labelled.csv"),
                         "--test", str(data / "test.csv"), "--seed", "0", "--round", "0",
                         "--cache-dir", str(tmp_path / f"cache_{gpus}"), "--out", str(out)]) == 0
        metrics[gpus] = json.loads(out.read_text())
    single, parallel = metrics[0], metrics[2]
    assert (single["processes"], parallel["processes"]) == (1, 2)
    assert single["finetune_key"] == parallel["finetune_key"]  # one cache entry: the same model up to rounding
    assert [e["steps"] for e in parallel["loss_curve"]] == [e["steps"] for e in single["loss_curve"]]
    np.testing.assert_allclose([e["loss"] for e in parallel["loss_curve"]], [e["loss"] for e in single["loss_curve"]],
                               rtol=1e-4)
    assert abs(parallel["accuracy"] - single["accuracy"]) <= 1 / 20  # at most one test image flips on rounding
    assert parallel["status"] == single["status"]
