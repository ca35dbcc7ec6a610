"""Tests for asvp.proxy: the MLP proxy (paper sec. 6.1) and its training recipe (official mode 0)."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import asvp.proxy
from asvp.errors import DataError
from asvp.proxy import ProxyMLP, ProxyRecipe, _batches, save_weights, train_proxy
from asvp.proxy_scoring import load_weights, proxy_chunks, write_proxy_outputs

pytestmark = pytest.mark.usefixtures("torch_single_thread")

FAST = ProxyRecipe(epochs=3, lr=0.05, batch_size=16)


def _blobs(n_per_class: int = 20, dim: int = 8, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs: class c is centred at 6 * e_c."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    centres = 6.0 * np.eye(classes, dim)
    features = centres[labels] + rng.normal(size=(len(labels), dim))
    return features.astype(np.float32), labels.astype(np.int64)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def _saved_weights(model: ProxyMLP, folder: Path) -> dict[str, np.ndarray]:
    """The weights as the select job gets them: saved to proxy.npz by the training job, loaded back."""
    save_weights(model, folder / "proxy.npz")
    return load_weights(folder / "proxy.npz")


def _scored(model: ProxyMLP, features: object, rows: np.ndarray, batch_size: int, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, hidden embeddings) of `rows`, scored in numpy as the select job scores them."""
    chunks = list(proxy_chunks(_saved_weights(model, folder), features, rows, batch_size))
    return np.concatenate([p for _, p, _ in chunks]), np.concatenate([h for _, _, h in chunks])


def test_architecture_is_linear_batchnorm_relu_linear_with_hidden_equal_to_feature_dim() -> None:
    model = ProxyMLP(12, 5)
    layers = list(model.hidden) + [model.classifier]
    assert [type(layer) for layer in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (12, 12)
    assert layers[1].num_features == 12
    assert (layers[3].in_features, layers[3].out_features) == (12, 5)
    x = torch.randn(4, 12)
    model.eval()
    assert model.embed(x).shape == (4, 12)
    assert (model.embed(x) >= 0).all()  # post-ReLU embedding
    assert torch.equal(model(x), model.classifier(model.embed(x)))


def test_training_is_bit_identical_for_the_same_seed_and_differs_for_another() -> None:
    features, labels = _blobs()
    first = _weights(train_proxy(features, labels, 3, FAST, seed=4))
    again = _weights(train_proxy(features, labels, 3, FAST, seed=4))
    other = _weights(train_proxy(features, labels, 3, FAST, seed=5))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_labelled_set_of_size_one_mod_batch_size_trains() -> None:
    # 33 = 2 * 16 + 1: the official code's last batch of one sample crashes BatchNorm.
    features, labels = _blobs(n_per_class=11)
    assert len(features) % FAST.batch_size == 1
    model = train_proxy(features, labels, 3, FAST, seed=0)
    assert not model.training


def test_batches_merge_a_trailing_single_sample_and_cover_every_row_once() -> None:
    batches = _batches(33, 16, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [16, 17]
    assert sorted(torch.cat(batches).tolist()) == list(range(33))
    assert [len(b) for b in _batches(34, 16, torch.Generator().manual_seed(0))] == [16, 16, 2]
    assert [len(b) for b in _batches(1, 16, torch.Generator().manual_seed(0))] == [1]


def test_proxy_learns_separable_blobs(tmp_path: Path) -> None:
    features, labels = _blobs(n_per_class=30)
    model = train_proxy(features, labels, 3, ProxyRecipe(epochs=20, lr=0.05, batch_size=16), seed=0)
    probs, _ = _scored(model, features, np.arange(len(features)), 64, tmp_path)
    assert (probs.argmax(axis=1) == labels).mean() >= 0.95


def test_lr_follows_the_per_step_cosine_7_16_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lr seen by each optimizer step is base * cos(pi * 7/16 * step / total); it ends near 0.195x."""
    seen: list[float] = []
    optimizers: list[torch.optim.Optimizer] = []

    class RecordingSGD(torch.optim.SGD):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            optimizers.append(self)

        def step(self, closure=None):  # type: ignore[no-untyped-def]
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(asvp.proxy.torch.optim, "SGD", RecordingSGD)
    features, labels = _blobs(n_per_class=11)  # 33 rows, batch 16 -> 2 steps per epoch (merged tail)
    recipe = ProxyRecipe(epochs=4, lr=0.2, batch_size=16, max_cycles=1)  # the paper's single cycle
    train_proxy(features, labels, 3, recipe, seed=0)
    total = 4 * 2
    expected = [0.2 * math.cos(math.pi * 7 / 16 * step / total) for step in range(total)]
    assert seen == pytest.approx(expected, rel=1e-12)
    group = optimizers[0].param_groups[0]
    assert group["lr"] == pytest.approx(0.2 * math.cos(7 * math.pi / 16), rel=1e-12)
    assert group["lr"] / 0.2 == pytest.approx(0.195, abs=1e-3)
    assert group["momentum"] == 0.9 and group["nesterov"] is True and group["weight_decay"] == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_raise(bad: float) -> None:
    features, labels = _blobs()
    features[7, 2] = bad
    with pytest.raises(DataError, match=r"labelled features contain NaN in \d and Inf in \d of \d+ rows \(first bad row: 7\)"):
        train_proxy(features, labels, 3, FAST, seed=0)


def test_fewer_than_two_labelled_samples_raise() -> None:
    features, labels = _blobs()
    with pytest.raises(DataError, match="at least 2"):
        train_proxy(features[:1], labels[:1], 3, FAST, seed=0)


def test_scoring_nan_pool_features_raises(tmp_path: Path) -> None:
    features, labels = _blobs()
    model = train_proxy(features, labels, 3, FAST, seed=0)
    pool = features.copy()
    pool[3] = np.nan
    with pytest.raises(DataError):
        _scored(model, pool, np.arange(len(pool)), 8, tmp_path)


def test_probabilities_sum_to_one_and_embeddings_have_the_hidden_width(tmp_path: Path) -> None:
    features, labels = _blobs()
    model = train_proxy(features, labels, 3, FAST, seed=0)
    unlabelled, labelled = np.arange(10, len(features)), np.arange(10)
    paths = write_proxy_outputs(_saved_weights(model, tmp_path), features, unlabelled, labelled, tmp_path, 7,
                                with_probabilities=True)
    probs, embeds = np.load(paths["probabilities"]), np.load(paths["hidden"])
    assert probs.shape == (len(unlabelled), 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs >= 0).all()
    assert embeds.shape == (len(unlabelled), features.shape[1])
    assert np.load(paths["labelled_hidden"]).shape == (len(labelled), features.shape[1])
    (tmp_path / "proxy_probabilities.npy").unlink()
    paths = write_proxy_outputs(_saved_weights(model, tmp_path), features, unlabelled, labelled, tmp_path, 7,
                                with_probabilities=False)
    assert "probabilities" not in paths and not (tmp_path / "proxy_probabilities.npy").exists()


def test_scoring_from_hdf5_with_unsorted_rows_matches_in_memory_order(tmp_path: Path) -> None:
    features, labels = _blobs()
    model = train_proxy(features, labels, 3, FAST, seed=0)
    rows = np.array([41, 3, 17, 0, 59, 22, 8, 35, 1, 50, 12], dtype=np.int64)
    with h5py.File(tmp_path / "f.h5", "w") as handle:
        handle.create_dataset("features", data=features)
    with h5py.File(tmp_path / "f.h5", "r") as handle:
        from_disk, disk_embeds = _scored(model, handle["features"], rows, 4, tmp_path)
    in_memory, memory_embeds = _scored(model, features, rows, 4, tmp_path)
    np.testing.assert_array_equal(from_disk, in_memory)
    np.testing.assert_array_equal(disk_embeds, memory_embeds)
    # each row is the proxy's output on exactly that feature row, in the requested order
    with torch.no_grad():
        direct = torch.softmax(model(torch.as_tensor(features[rows])), dim=1).numpy()
    np.testing.assert_allclose(from_disk, direct, rtol=1e-5, atol=1e-6)


def test_saved_weights_load_back_as_the_models_float32_arrays_with_no_temp_file_left(tmp_path: Path) -> None:
    features, labels = _blobs()
    model = train_proxy(features, labels, 3, FAST, seed=0)
    weights = _saved_weights(model, tmp_path)
    linear, norm = model.hidden[0], model.hidden[1]
    expected = {"hidden_weight": linear.weight, "hidden_bias": linear.bias, "bn_weight": norm.weight, "bn_bias": norm.bias,
                "bn_running_mean": norm.running_mean, "bn_running_var": norm.running_var,
                "classifier_weight": model.classifier.weight, "classifier_bias": model.classifier.bias}
    assert sorted(weights) == sorted(expected)
    for name, tensor in expected.items():
        assert weights[name].dtype == np.float32
        np.testing.assert_array_equal(weights[name], tensor.detach().numpy())
    rows = np.arange(len(features))
    original, _ = _scored(model, features, rows, 16, tmp_path)
    reloaded = np.concatenate([p for _, p, _ in proxy_chunks(weights, features, rows, 16)])
    np.testing.assert_array_equal(original, reloaded)
    assert [p.name for p in tmp_path.iterdir()] == ["proxy.npz"]  # no temp file left behind


def test_recipe_from_config_accepts_the_validated_proxy_section() -> None:
    from asvp.config import validate_config

    config = validate_config({"experiment": "unit", "proxy": {"epochs": 7}})
    recipe = ProxyRecipe.from_config(config["proxy"])
    assert recipe == ProxyRecipe(epochs=7)


def test_the_numpy_scoring_pass_matches_the_torch_proxy(tmp_path: Path) -> None:
    """The select job scores with proxy.npz in numpy (no torch import): same probabilities."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = np.arange(60) % 3
    model = train_proxy(x[:30], y[:30], 3, ProxyRecipe(epochs=5, batch_size=16), seed=0)
    save_weights(model, tmp_path / "proxy.npz")
    with h5py.File(tmp_path / "f.h5", "w") as handle:
        handle["pool/features"] = x
    rows = np.array([50, 3, 31, 59, 10, 32])  # unsorted, as unlabelled rows may be
    with torch.no_grad():
        expected = torch.softmax(model(torch.as_tensor(x[rows])), dim=1).numpy()
    with h5py.File(tmp_path / "f.h5") as handle:
        got = np.concatenate([p for _, p, _ in proxy_chunks(load_weights(tmp_path / "proxy.npz"), handle["pool/features"],
                                                              rows, batch_size=4)])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert got.dtype == np.float32 and got.shape == (6, 3)


def test_consecutive_rows_are_read_as_a_slice_with_the_same_outputs_as_a_gather(tmp_path: Path) -> None:
    """The whole pool in order takes the slice path; the same rows gathered give the same bits."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8)).astype(np.float16)
    model = train_proxy(x[:20].astype(np.float32), np.arange(20) % 3, 3, ProxyRecipe(epochs=3, batch_size=8), seed=0)
    save_weights(model, tmp_path / "proxy.npz")
    weights = load_weights(tmp_path / "proxy.npz")
    consecutive = np.arange(5, 37)
    shuffled = rng.permutation(consecutive)
    outputs = {}
    for name, rows in (("slice", consecutive), ("gather", shuffled)):
        chunks = list(proxy_chunks(weights, x, rows, batch_size=32))
        assert len(chunks) == 1
        _, probabilities, hidden = chunks[0]
        order = np.argsort(rows)
        outputs[name] = (probabilities[order], hidden[order])
    np.testing.assert_array_equal(outputs["slice"][0], outputs["gather"][0])
    np.testing.assert_array_equal(outputs["slice"][1], outputs["gather"][1])


def _separable_2000(classes: int = 10, dim: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """2,000 rows of overlapping-but-separable Gaussian classes: one batch of the paper's 2,048, so
    its recipe is only 50 full-batch steps."""
    generator = np.random.default_rng(0)
    labels = np.arange(2000) % classes
    features = generator.normal(size=(classes, dim))[labels] + generator.normal(size=(2000, dim))
    return features.astype(np.float32), labels


def test_the_default_proxy_trains_to_its_target_loss_on_2000_rows_where_one_cycle_underfits() -> None:
    features, labels = _separable_2000()
    paper = train_proxy(features, labels, 10, ProxyRecipe(max_cycles=1), seed=0)
    default = train_proxy(features, labels, 10, ProxyRecipe(), seed=0)
    assert paper.fit_record["final_train_loss"] > 0.2 and paper.fit_record["cycles"] == 1
    assert default.fit_record["final_train_loss"] <= ProxyRecipe().target_loss
    assert default.fit_record["cycles"] > 1 and default.fit_record["steps"] == 50 * default.fit_record["cycles"]
    again = train_proxy(features, labels, 10, ProxyRecipe(), seed=0)  # the loss-based stop is deterministic
    assert again.fit_record == default.fit_record
    assert all(torch.equal(a, b) for a, b in zip(_weights(default), _weights(again)))


def test_the_training_record_is_saved_with_the_weights_and_kept_out_of_them(tmp_path: Path) -> None:
    features, labels = _blobs()
    model = train_proxy(features, labels, 3, FAST, seed=0)
    save_weights(model, tmp_path / "proxy.npz")
    assert asvp.proxy.training_record(tmp_path / "proxy.npz") == model.fit_record
    assert set(model.fit_record) == {"final_train_loss", "cycles", "steps"}
    assert not any(name.startswith("training_") for name in load_weights(tmp_path / "proxy.npz"))
