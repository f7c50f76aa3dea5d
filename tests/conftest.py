"""Shared fixtures: the real ComfyUI server (one per session) with the pack and tiny models; the pack imported
in-process under a fixed name for unit tests of code that runs inside ComfyUI."""
from __future__ import annotations

import glob
import importlib
import json
import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]   # tests/ (shared test helpers) and the repository (harness/)

from harness.paths import REPO, pack_module, use_comfy_in_process  # noqa: E402

RENDEZVOUS_SECRET = "test-only-rendezvous-secret-5f1c2a"   # the server's and the remote workers' (multi-GPU tests)

# (module, function(base_dir)): more fixture models/inputs a capability needs in the server's base directory
EXTRA_FIXTURE_WRITERS = [
    ("harness.tiny_depth", "write_depth_fixtures"),
    ("harness.tiny_reflection", "write_reflection_fixtures"),
    ("harness.tiny_mfm", "write_mfm_fixtures"),
]


@pytest.fixture(scope="session")
def comfy_in_process():
    """ComfyUI's own modules importable in the test process (CPU)."""
    use_comfy_in_process()
    import comfy.model_management  # noqa: F401
    return True


@pytest.fixture(scope="session")
def pack(comfy_in_process):
    """The pack imported as a package, as ComfyUI imports it (relative imports and all)."""
    return pack_module


@pytest.fixture(scope="session")
def comfy_base(tmp_path_factory, comfy_in_process):
    from harness.comfy_server import prepare_base_directory
    from harness.tiny_models import FIXTURE_NODES, write_example_inputs, write_fixture_models

    base = str(tmp_path_factory.mktemp("comfy_base"))
    prepare_base_directory(base, [os.path.join(FIXTURE_NODES, "unicascade_test_fixtures")])
    write_fixture_models(os.path.join(base, "models"))
    write_example_inputs(os.path.join(base, "input"))
    for module_name, function in EXTRA_FIXTURE_WRITERS:
        if os.path.exists(os.path.join(REPO, *module_name.split(".")) + ".py"):
            getattr(importlib.import_module(module_name), function)(base)
    return base


class Trace:
    """The JSON-lines trace the pack writes when UNICASCADE_TRACE_FILE is set."""

    def __init__(self, path: str):
        self.path = path

    def clear(self) -> None:
        open(self.path, "w").close()

    def records(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def comfy_server(comfy_base):
    from harness.comfy_server import ComfyServer

    trace = os.path.join(comfy_base, "trace.jsonl")
    faults = os.path.join(comfy_base, "worker_faults.txt")   # read by distributed/rank_worker.py's fault_point
    server = ComfyServer(comfy_base, env={"UNICASCADE_TRACE_FILE": trace, "UNICASCADE_TEST_FAULTS": faults,
                                          "UNICASCADE_RENDEZVOUS_SECRET": RENDEZVOUS_SECRET})
    server.start()
    server.trace, server.faults = Trace(trace), faults
    yield server
    server.stop()


ARTIFACTS = os.path.join(REPO, "test-artifacts")


@pytest.fixture(scope="session")
def comfy_page(comfy_server):
    """The real frontend of the session's server in headless chromium."""
    from harness.browser import ComfyPage

    page = ComfyPage(comfy_server, os.path.join(ARTIFACTS, "screenshots")).start()
    yield page
    page.stop()


@pytest.fixture
def comfy(comfy_server, request):
    """The session's server, with a per-test output prefix and the trace cleared."""
    comfy_server.prefix = request.node.name.replace("[", "_").replace("]", "").replace("/", "_")
    comfy_server.trace.clear()
    status = comfy_server.proc.poll()
    assert status is None, f"ComfyUI died earlier (exit {status}):\n{comfy_server.log_tail()}"
    return comfy_server


def load_latent(server, prefix: str):
    """The newest .latent file SaveLatent wrote for ``prefix`` (a safetensors file)."""
    from safetensors.torch import load_file

    files = sorted(glob.glob(server.output_path(f"{prefix}_*.latent")))
    assert files, f"no latent saved for {prefix}"
    return load_file(files[-1])["latent_tensor"]
