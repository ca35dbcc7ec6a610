"""The conda environments install what pyproject.toml and the bootstrap install, and the
workflow passes `snakemake --lint` (what the Snakemake workflow catalog requires)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for line in requirements:
        if m := re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line.strip()):
            pins[m.group(1).lower()] = m.group(2)
    return pins


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_conda_env_installs_the_project_with_the_same_pins(env: Path) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    spec = yaml.safe_load(env.read_text())
    dependencies = spec["dependencies"]
    python = next(d for d in dependencies if isinstance(d, str) and d.startswith("python="))
    minimum = project["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.removeprefix("python=").split("."))) >= tuple(map(int, minimum.split(".")))
    pip = next(d["pip"] for d in dependencies if isinstance(d, dict) and "pip" in d)
    assert "-e .." in pip  # the project itself: every pyproject dependency, at pyproject's bounds
    env_pins, project_pins = _pins(pip), _pins(project["dependencies"])
    for name in ("torch", "torchvision"):
        assert env_pins[name] == project_pins[name], f"{env.name}: {name} {env_pins[name]} != pyproject {project_pins[name]}"
    weights = re.search(r'WEIGHTS_PIN="([^"]+)"', (REPO / "scripts/bootstrap.sh").read_text()).group(1)
    assert any(line.startswith(weights) for line in pip), f"{env.name} lacks the packaged weights {weights}"


def test_every_rule_has_a_conda_env_and_the_workflow_lints_clean(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                             "--lint", "--cores", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
