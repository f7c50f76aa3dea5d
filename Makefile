# The README's contract: `make demo` and `make test` each build their own environment on a fresh machine.
# The main host is ComfyUI 0.33.0 (.venv + .build/comfyui); `make test-floor` runs the suite on the oldest host the
# pack supports, ComfyUI 0.3.75 (.venv-floor + .build/comfyui-floor). CI (.ci/run) runs both.
PY := .venv/bin/python
FLOOR := UNICASCADE_COMFYUI_DIR=$(CURDIR)/.build/comfyui-floor .venv-floor/bin/python

.PHONY: setup setup-floor demo test test-floor lint bench bench-floor bench-gpu clean

setup:
	bash scripts/setup_env.sh main

setup-floor:
	bash scripts/setup_env.sh floor

demo: setup
	$(PY) scripts/demo.py --out demo_output

test: setup
	$(PY) -m pytest

# ruff (pyproject.toml [tool.ruff]) and the one-way import stack (docs/architecture.md); CI runs it first
lint: setup
	$(PY) -m ruff check .
	$(PY) scripts/check_imports.py

# the suite on ComfyUI 0.3.75, less what `make test` already proved for every host: tests that never reach ComfyUI's
# code (host_independent) and repeats of a covered host path with more ranks, shards or fault points (host_repeat)
test-floor: setup-floor
	$(FLOOR) -m pytest -m "not host_independent and not host_repeat"

bench: setup
	$(PY) benchmarks/tma_overhead.py
	$(PY) benchmarks/attention_kernels.py

# on a machine with one NVIDIA GPU: kernels against float64 and SDPA, a UniMMVSR 1.3B step (JSON; ≤ 8 min)
bench-gpu: setup
	$(PY) benchmarks/gpu_suite.py

bench-floor: setup-floor
	$(FLOOR) benchmarks/tma_overhead.py

clean:
	rm -rf .venv .venv-floor .build demo_output test-artifacts .pytest_cache
