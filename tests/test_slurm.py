"""What each job asks SLURM for (partition, GPUs), through the real SLURM executor plugin against
fake SLURM commands (tests/fake_slurm/fake_slurm.py: sbatch records its arguments and runs each
job script at once on this machine). A one-node CPU cluster cannot show GPU requests; running,
resuming, cancelling and polling are tested on a real cluster in tests/test_slurm_real.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
COMMANDS = ("sbatch", "srun", "squeue", "sacct", "scancel", "sinfo", "scontrol", "sacctmgr", "sshare")

pytestmark = pytest.mark.workflow


def _fake_slurm(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in COMMANDS:
        (bin_dir / name).symlink_to(REPO / "tests" / "fake_slurm" / "fake_slurm.py")
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "FAKE_SLURM_DIR": str(tmp_path / "slurm"), "FAKE_SLURM_ACCOUNT": "CHANGE_ME", "PYTHONHASHSEED": "0"}


def _rule_of(args: list[str]) -> str:
    comment = args[args.index("--comment") + 1] if "--comment" in args else ""
    return comment.removeprefix("rule_").split("_wildcards_")[0]


def test_submissions_through_the_slurm_plugin(tmp_path: Path, real_fashion_mnist: Path, default_weights: Path) -> None:
    override = tmp_path / "cluster.yaml"
    override.write_text("methods: [svpp, asvp]\ndevice: auto\ngpus_per_job: 2\nschedule:\n  budgets: [20, 20]\nevaluation:\n  at: [40]\n")
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         "--profile", str(REPO / "profiles" / "slurm"), "--slurm-partition-config", str(REPO / "profiles/slurm/partitions.yaml"),
         "--slurm-init-seconds-before-status-checks", "1", "--jobs", "2", "--configfile", str(TINY), str(override)],
        capture_output=True, text=True, timeout=1200, env=_fake_slurm(tmp_path), cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    submitted = [json.loads(line) for line in (tmp_path / "slurm" / "sbatch.jsonl").read_text().splitlines()]
    by_rule: dict[str, list[list[str]]] = {}
    for job in submitted:
        by_rule.setdefault(_rule_of(job["args"]), []).append(job["args"])
    (tmp_path / "submitted.json").write_text(json.dumps(by_rule, indent=1))
    # Small-file steps run in the head process: never submitted.
    assert set(by_rule) == {"extract_pretrained", "select_proxy", "select_proxy_decide", "refresh_features", "evaluate",
                            "deliver"}

    def partition(args: list[str]) -> str:
        return args[args.index("-p") + 1]

    def gpus(args: list[str]) -> list[str]:
        return [a for a in args if a.startswith("--gpus")]

    # The proxy steps of a round (train, select, label; ASVP's decision) are one submission per
    # round and run, on the CPU partition.
    assert len(by_rule["select_proxy"]) == len(by_rule["select_proxy_decide"]) == 1
    assert all(partition(a) == "cpu" and not gpus(a) for r in ("select_proxy", "select_proxy_decide") for a in by_rule[r])
    # Fine-tunes, extractions and the delivery (the pool's predictions) ask for gpus_per_job GPUs.
    assert all(partition(a) == "gpu" and gpus(a) == ["--gpus=2"] for r in ("extract_pretrained", "evaluate", "deliver")
               for a in by_rule[r])
    # A GPU for a refresh only where the round's decision refreshes (round 1 here, not round 0).
    refreshes = {a[a.index("--comment") + 1].rsplit("_", 1)[1]: a for a in by_rule["refresh_features"]}
    decisions = {r: json.loads((workdir / f"results/tiny/asvp/margin/seed0/round{r}/decision.json").read_text())
                 for r in refreshes}
    for r, args in refreshes.items():
        wants = decisions[r]["refresh_features"]
        assert (partition(args), gpus(args)) == (("gpu", ["--gpus=2"]) if wants else ("cpu", [])), (r, args)
    assert {decisions[r]["refresh_features"] for r in refreshes} == {True, False}
