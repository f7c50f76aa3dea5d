"""benchmarks/gpu_suite.py is ready before a GPU is spent on it: without CUDA it says so and exits cleanly; at tiny
shapes on this CPU (--smoke) every section runs through the same code and the kernels meet the bound the suite
will hold a GPU to."""
import json
import os
import subprocess
import sys

import pytest

from harness.paths import REPO

SUITE = os.path.join(REPO, "benchmarks", "gpu_suite.py")
pytestmark = pytest.mark.host_repeat   # the suite's own plumbing; the paths it calls are tested on both hosts


def run(*args, timeout=600):
    return subprocess.run([sys.executable, SUITE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_without_cuda_it_says_so_and_measures_nothing():
    proc = run()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {"cuda": False}
    assert "no CUDA device here" in proc.stderr and "--smoke" in proc.stderr


def test_smoke_run_goes_through_every_section(tmp_path):
    out = tmp_path / "smoke.json"
    proc = run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and report["gpu"] is None
    kernels = report["kernels"]
    assert {(k["dtype"], k["references"]) for k in kernels} == {(d, r) for d in ("bfloat16", "float16")
                                                                 for r in (False, True)}
    for k in kernels:
        assert "error_message" not in k, k
        assert k["within_bound"] and 0 < k["error"] <= k["bound"] < 2e-2, k
    step = report["unimmvsr_step"]
    assert "error_message" not in step, step.get("traceback")
    assert step["seconds"] > 0 and step["latent"] == [1, 16, 2, 16, 24]
    trainer = report["trainer_lora_step"]
    assert "error_message" not in trainer, trainer.get("traceback")
    assert len(trainer["seconds_per_step"]) == 2 and all(s > 0 for s in trainer["seconds_per_step"])
    assert 0 < trainer["trainable"] < trainer["parameters"] and trainer["plan_gpu_gib"] > 0
    assert "cuda_peak_gib" not in trainer   # logged on CUDA only
    mfm = report["mfm_2b_step"]
    assert "error_message" not in mfm, mfm.get("traceback")
    assert mfm["seconds"] > 0 and mfm["tokens"] == 2 * 4 * 4 and mfm["blocks"] == 2 and mfm["block_flops"] > 0
