"""The cheap per-round jobs never import torch.

`import torch` costs 3-5 s on a busy 2-core machine, more than these jobs' whole work, and a
run has several of them per round. Each command runs here as the rules run it (`python -m
asvp ...`, with `--threads` where the rule passes it) on small real files, in a fresh
interpreter that reports which heavy modules were loaded when it exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from asvp.atomic import read_json, write_csv
from asvp.config import validate_config
from asvp import features as feature_store
from asvp.pool import split_table

REPO = Path(__file__).resolve().parents[1]
POOL, TEST, DIM, CLASSES = 60, 12, 8, 3

# Runs `python -m asvp <args>` and prints the heavy modules loaded by the time it finished.
REPORT_IMPORTS = """
import runpy, sys, traceback
sys.argv = ["asvp", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("asvp", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
except Exception:
    traceback.print_exc()
    code = 1
print("heavy modules:", sorted(name for name in ("torch", "torchvision") if name in sys.modules))
sys.exit(code)
"""


def asvp(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", REPORT_IMPORTS, *args], cwd=workdir, capture_output=True,
                          text=True, timeout=120, env=env)


def assert_torch_free(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "heavy modules: []" in result.stdout, result.stdout + result.stderr


def write_features(out: Path, splits: dict[str, tuple[np.ndarray, np.ndarray, list[str]]], attrs: dict) -> None:
    """A complete features.h5 of features already in memory, through the writer the extraction fills:
    splits[name] = (features (N, D) float32, labels (N,), sample ids)."""
    partial = feature_store.partial_path(out)
    with feature_store.open_partial(partial, fingerprint="test") as handle:
        for name, (features, labels, sample_ids) in splits.items():
            group = feature_store.require_split(handle, name, labels, sample_ids, features.shape[1], "float32", len(features))
            feature_store.write_rows(handle, group, 0, features)
        feature_store.mark_complete(handle, attrs, "float32", features.shape[1])
    os.replace(partial, out)


@pytest.fixture
def run_files(tmp_path: Path) -> Path:
    """pool.csv, test.csv and a complete features.h5 for them (separable classes, so PED moves)."""
    rng = np.random.default_rng(0)
    for name, n in (("pool", POOL), ("test", TEST)):
        labels = np.arange(n) % CLASSES
        write_csv(tmp_path / f"{name}.csv", split_table(np.arange(n), [f"train/{i:06d}" for i in range(n)], labels))
    splits = {}
    for name, n in (("pool", POOL), ("test", TEST)):
        labels = np.arange(n) % CLASSES
        features = rng.normal(size=(n, DIM)).astype(np.float32) + 0.5 * np.eye(DIM, dtype=np.float32)[labels]
        splits[name] = (features, labels, [f"train/{i:06d}" for i in range(n)])
    write_features(tmp_path / "features.h5", splits, attrs={"backbone": "test", "num_classes": CLASSES})
    return tmp_path


def test_select_initial_label_decide_random_select_and_a_pass_through_refresh_import_no_torch(run_files: Path) -> None:
    r0 = run_files / "round000"
    assert_torch_free(asvp(run_files, "select-initial", "--strategy", "margin", "--pool", "pool.csv", "--budget", "15",
                           "--seed", "0", "--round", "0", "--selected-out", "round000/selected.csv",
                           "--scores-out", "round000/scores.npy"))
    assert_torch_free(asvp(run_files, "label", "--selected", "round000/selected.csv", "--pool", "pool.csv",
                           "--round", "0", "--out", "round000/labelled.csv"))
    decision = json.dumps({"decision": validate_config({"experiment": "t"})["decision"]})
    assert_torch_free(asvp(run_files, "--threads", "2", "decide", "--config-json", decision, "--method", "asvp",
                           "--features", "features.h5",
                           "--labelled", "round000/labelled.csv", "--seed", "0", "--round", "0",
                           "--out", "round000/decision.json"))
    assert read_json(r0 / "decision.json")["refresh_features"] is False  # round 0: keep
    assert_torch_free(asvp(run_files, "--threads", "2", "refresh-features", "--config-json", "{}",
                           "--decision", "round000/decision.json", "--pool", "pool.csv", "--test", "test.csv",
                           "--labelled", "round000/labelled.csv", "--previous-features", "features.h5",
                           "--seed", "0", "--round", "0", "--cache-dir", "finetunes", "--out", "round000/features.h5"))
    assert (r0 / "features.h5").is_symlink() and (r0 / "features.h5").resolve() == (run_files / "features.h5").resolve()
    assert len((r0 / "labelled.csv").read_text().splitlines()) == 16
    # The random baseline's later rounds score with no model either.
    assert_torch_free(asvp(run_files, "select-random", "--strategy", "random", "--budget", "10", "--seed", "0", "--round", "1",
                           "--pool", "pool.csv", "--labelled", "round000/labelled.csv",
                           "--selected-out", "round001/selected.csv", "--scores-out", "round001/scores.npy"))
    assert len((run_files / "round001/selected.csv").read_text().splitlines()) == 11
    # SVPp/ASVP selection scores with the proxy's weights as arrays (proxy.npz), without torch.
    rng = np.random.default_rng(1)
    np.savez(run_files / "proxy.npz", hidden_weight=rng.normal(size=(DIM, DIM)), hidden_bias=np.zeros(DIM),
             bn_weight=np.ones(DIM), bn_bias=np.zeros(DIM), bn_running_mean=np.zeros(DIM), bn_running_var=np.ones(DIM),
             classifier_weight=rng.normal(size=(CLASSES, DIM)), classifier_bias=np.zeros(CLASSES))
    assert_torch_free(asvp(run_files, "--threads", "2", "select-proxy", "--strategy", "margin", "--budget", "10", "--seed", "0",
                           "--round", "1", "--pool", "pool.csv", "--labelled", "round000/labelled.csv",
                           "--features", "features.h5", "--proxy-weights", "proxy.npz", "--config-json", "{}",
                           "--selected-out", "proxy_round/selected.csv", "--scores-out", "proxy_round/scores.npy"))
    assert len((run_files / "proxy_round/selected.csv").read_text().splitlines()) == 11


def test_the_import_report_does_see_torch_when_a_command_loads_it(run_files: Path) -> None:
    """Guards the test above against passing vacuously: train-proxy needs torch and must show it."""
    result = asvp(run_files, "--threads", "1", "train-proxy", "--config-json", '{"proxy": {}}', "--features", "missing.h5",
                  "--labelled", "missing.csv", "--seed", "0", "--round", "1", "--weights-out", "proxy.npz")
    assert result.returncode == 2 and "missing.h5 does not exist" in result.stderr, result.stderr
    assert "'torch'" in result.stdout, result.stdout + result.stderr


def _proxy_weights(path: Path) -> None:
    rng = np.random.default_rng(1)
    np.savez(path, hidden_weight=rng.normal(size=(DIM, DIM)), hidden_bias=np.zeros(DIM),
             bn_weight=np.ones(DIM), bn_bias=np.zeros(DIM), bn_running_mean=np.zeros(DIM), bn_running_var=np.ones(DIM),
             classifier_weight=rng.normal(size=(CLASSES, DIM)), classifier_bias=np.zeros(CLASSES))


@pytest.mark.parametrize("strategy", ["margin", "coreset", "badge", "activeft"])
def test_proxy_selection_streams_the_pool_and_equals_the_in_memory_selection(run_files: Path, strategy: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The select job's streamed scoring (chunks of 7 rows, embeddings through .npy memory maps)
    picks exactly what the strategy picks on the whole pool's proxy outputs held in memory."""
    monkeypatch.setattr("asvp.proxy_scoring.INFERENCE_BATCH_SIZE", 7)
    from asvp.features import load_rows
    from asvp.pool import read_labelled, unlabelled_indices
    from asvp.proxy_scoring import load_weights, proxy_chunks
    from asvp.steps import select as steps
    from asvp.steps.select import Query, label_round, round_rng
    from asvp.strategies import PoolState, get_strategy

    (run_files / "r0").mkdir()
    steps.select_initial(Query("margin", 15, 0, 0, str(run_files / "pool.csv"), None, str(run_files / "r0" / "selected.csv"),
                               str(run_files / "r0" / "scores.npy")))
    label_round(run_files / "r0" / "selected.csv", run_files / "pool.csv", None, 0, run_files / "r0" / "labelled.csv")
    _proxy_weights(run_files / "proxy.npz")
    out = run_files / "r1"
    steps.select_proxy(Query(strategy, 10, 0, 1, str(run_files / "pool.csv"), str(run_files / "r0" / "labelled.csv"),
                             str(out / "selected.csv"), str(out / "scores.npy")),
                       str(run_files / "features.h5"), str(run_files / "proxy.npz"))
    streamed = pd.read_csv(out / "selected.csv")["pool_index"].to_numpy()
    assert not list(out.glob("proxy_*.npy"))  # the embeddings files are gone once selected.csv exists

    labelled = read_labelled(run_files / "r0" / "labelled.csv", POOL)["pool_index"].to_numpy()
    unlabelled = unlabelled_indices(POOL, read_labelled(run_files / "r0" / "labelled.csv", POOL))
    features, _ = load_rows(run_files / "features.h5", "pool")
    weights = load_weights(run_files / "proxy.npz")
    (_, probabilities, hidden), = proxy_chunks(weights, features, unlabelled, 10_000)
    (_, _, labelled_hidden), = proxy_chunks(weights, features, labelled, 10_000)
    state = PoolState(unlabelled=unlabelled, labelled=labelled, probabilities=probabilities,
                      embeddings=hidden, labelled_embeddings=labelled_hidden)
    expected, _ = get_strategy(strategy).select(state, 10, round_rng(0, 1))
    assert streamed.tolist() == expected.tolist()
    assert len(set(streamed)) == 10 and not set(streamed) & set(labelled)
