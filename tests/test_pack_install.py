"""The pack as ComfyUI sees it: registration, schema hygiene, start-up cost, folders, web directory, metadata."""
import os
import re
import subprocess
import sys
import tomllib

import pytest

from harness.paths import COMFY_DIR, REPO

pytestmark = pytest.mark.server

OUR_NODES = {"UniCascadeTemperatureModalityAlignment", "UniCascadeTACA"}


def our_nodes(info):
    return {k: v for k, v in info.items() if k.startswith("UniCascade") and not k.startswith("UniCascadeTest")}


def test_nodes_registered_under_one_root_with_prefixed_ids(comfy):
    ours = our_nodes(comfy.object_info())
    assert OUR_NODES <= set(ours)
    for name, node in ours.items():
        assert node["category"].split("/")[0] == "UniCascade", name
        assert node["python_module"].startswith("custom_nodes."), name


def test_every_input_has_a_tooltip_with_default_and_range(comfy):
    for name, node in our_nodes(comfy.object_info()).items():
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                tooltip = options.get("tooltip", "")
                assert tooltip, f"{name}.{input_name} has no tooltip"
                if "default" in options and isinstance(options["default"], (int, float)):
                    assert "default" in tooltip.lower(), f"{name}.{input_name}: tooltip omits the default"
                    if "min" in options:
                        assert "range" in tooltip.lower(), f"{name}.{input_name}: tooltip omits the range"


def test_pack_adds_under_half_a_second_to_startup(comfy):
    log = re.sub(r"\x1b\[[0-9;]*m", "", comfy.log_text())            # newer hosts colour their log lines
    times = re.findall(r"^(?:\[[A-Z]+\]\s*)?\s*([\d.]+) seconds(?: \(IMPORT FAILED\))?: (.+)$", log, re.M)
    ours = [float(t) for t, path in times if path.strip().endswith("ComfyUI-UniCascade")]
    assert ours, "ComfyUI did not report the pack's import time"
    assert ours[0] < 0.5
    assert "IMPORT FAILED" not in log.split("Import times for custom nodes:")[1].split("\n\n")[0]


def test_import_cost_measured_precisely_in_a_fresh_interpreter():
    """Import the pack and build its node list the way ComfyUI does; heavy libraries must stay unloaded."""
    code = f"""
import sys, time, asyncio, importlib.util
sys.path.insert(0, {COMFY_DIR!r})
import comfy.cli_args; comfy.cli_args.args.cpu = True
import nodes, folder_paths  # the host is already loaded when ComfyUI imports a pack
host_cv2, host_kornia = "cv2" in sys.modules, "kornia" in sys.modules
t = time.perf_counter()
spec = importlib.util.spec_from_file_location("pack", {os.path.join(REPO, '__init__.py')!r},
                                              submodule_search_locations=[{REPO!r}])
m = importlib.util.module_from_spec(spec); sys.modules["pack"] = m; spec.loader.exec_module(m)
ext = asyncio.run(m.comfy_entrypoint()); node_list = asyncio.run(ext.get_node_list())
# what the pack loaded itself (a newer host may import cv2 on its own)
print(time.perf_counter() - t, len(node_list), "cv2" in sys.modules and not host_cv2,
      "kornia" in sys.modules and not host_kornia)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=COMFY_DIR)
    assert out.returncode == 0, out.stderr[-3000:]
    seconds, count, cv2_loaded, kornia_loaded = out.stdout.split()[-4:]
    assert float(seconds) < 0.5
    assert int(count) >= len(OUR_NODES)
    assert cv2_loaded == "False" and kornia_loaded == "False"


def test_model_folders_registered_and_extra_model_paths_work(comfy_base, tmp_path):
    """A second server with an extra_model_paths.yaml mapping our keys: its /models lists the files there."""
    from harness.comfy_server import ComfyServer

    extra = tmp_path / "elsewhere"
    (extra / "unimmvsr").mkdir(parents=True)
    (extra / "unimmvsr" / "my_upscaler.safetensors").write_bytes(b"x")
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(f"mine:\n    base_path: {extra}\n    unimmvsr: unimmvsr\n")
    base = tmp_path / "base"
    from harness.comfy_server import prepare_base_directory
    prepare_base_directory(str(base))
    server = ComfyServer(str(base), extra_args=["--extra-model-paths-config", str(config)]).start()
    try:
        folders = server.get("/models")
        for key in ("unimmvsr", "mfm", "depth_anything", "siglip", "LLM"):
            assert key in folders
        assert server.get("/models/unimmvsr") == ["my_upscaler.safetensors"]
    finally:
        server.stop()


def test_web_directory_served(comfy):
    extensions = comfy.get("/extensions")
    ours = [e for e in extensions if "ComfyUI-UniCascade" in e]
    assert ours and all(e.endswith(".js") for e in ours)
    assert any(e.endswith("/unicascade.js") for e in ours)
    assert len(ours) == len(set(ours))


def test_pyproject_metadata():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    comfy_table = meta["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert comfy_table[key]
    deps = " ".join(meta["project"]["dependencies"]).lower()
    assert "torch" not in deps
    with open(os.path.join(REPO, "requirements.txt")) as f:
        reqs = [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]
    assert sorted(reqs) == sorted(meta["project"]["dependencies"])
