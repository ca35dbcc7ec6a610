"""benchmarks/gpu_check.sh --cpu: the GPU check's steps, on the CPU at small sizes, so the
script a GPU machine runs once is known to work before it gets there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.workflow


def test_gpu_check_runs_every_step_on_the_cpu(tmp_path: Path, real_fashion_mnist: Path, default_weights: Path) -> None:
    out = tmp_path / "check"
    done = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu", str(out)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    steps = pd.read_csv(out / "steps.tsv", sep="\t", names=["step", "status", "seconds"])
    assert {"environment", "cuda_tests", "workflow", "speed"} <= set(steps["step"])
    assert (steps["status"] == 0).all()
    facts = json.loads((out / "environment.json").read_text())
    assert facts["torch"] and facts["gpus"] == [] and facts["packages"]["snakemake"]
    # The CUDA tests only skip here, and say why.
    assert "skipped" in (out / "cuda_tests.log").read_text()
    summary = pd.read_csv(out / "workflow" / "results" / "tiny" / "summary.csv")
    assert summary["accuracy"].between(0, 1).all()
    rows = json.loads((out / "speed" / "speed.json").read_text())
    ratios = {(r["setting"], r["measurement"]): r["value"] for r in rows if "target" in r["measurement"]}
    settings = {setting for setting, _ in ratios}
    assert len(settings) == 3 and all(value > 0 for value in ratios.values())
    assert "| step | exit status | seconds |" in (out / "summary.md").read_text()
