# The README's contract: `make demo` and `make test` each build their own environment on a fresh machine.
PY := .venv/bin/python

.PHONY: setup demo test bench clean

setup:
	bash scripts/setup_env.sh

demo: setup
	$(PY) scripts/demo.py --out demo_output

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/tma_overhead.py
	$(PY) benchmarks/attention_kernels.py

clean:
	rm -rf .venv .build demo_output test-artifacts .pytest_cache
