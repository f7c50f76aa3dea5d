"""scripts/check_comfy_api.py: the pack's ComfyUI symbols against the tree the tests use, and a synthetic tree where
a function lost a keyword and a module lost a name."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from harness.paths import COMFY_DIR, REPO

SCRIPT = os.path.join(REPO, "scripts", "check_comfy_api.py")


def load_checker():
    spec = importlib.util.spec_from_file_location("check_comfy_api", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text))
    return path


@pytest.mark.skipif(not os.path.isfile(os.path.join(COMFY_DIR, "nodes.py")), reason="no ComfyUI tree built")
def test_pack_matches_the_test_tree(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--comfyui", COMFY_DIR, "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    symbols = {r["symbol"]: r for r in result["symbols"]}
    assert len(symbols) > 100
    assert result["failing"] == 0
    for name in ("comfy.model_management.load_models_gpu", "comfy_api.latest.io.Combo.Input",
                 "comfy.samplers.CFGGuider", "folder_paths.get_full_path_or_raise"):
        assert symbols[name]["status"] == "ok", symbols[name]
    assert "symbol" in proc.stdout and "used at" in proc.stdout


def fake_tree(root):
    write(root, "nodes.py", "NODE_CLASS_MAPPINGS = {}\n")
    write(root, "comfy/model_management.py", """
        def load_models_gpu(models, memory_required=0):
            pass

        def get_torch_device():
            pass
    """)
    write(root, "comfy/utils.py", """
        def load_torch_file(ckpt, safe_load=False, device=None):
            pass
    """)
    write(root, "comfy_api/latest/__init__.py", """
        from . import _io as io

        class ComfyExtension:
            pass
    """)
    write(root, "comfy_api/latest/_io.py", """
        from ._base import *

        class Float(ComfyTypeIO):
            class Input(WidgetInput):
                def __init__(self, id, display_name=None, default=None, min=None, max=None, display_mode=None):
                    super().__init__(id, display_name)
    """)
    write(root, "comfy_api/latest/_base.py", """
        __all__ = ["ComfyTypeIO", "WidgetInput"]

        class WidgetInput:
            def __init__(self, id, display_name=None):
                self.id = id

        class ComfyTypeIO:
            class Output:
                def __init__(self, display_name=None):
                    pass
    """)


PACK_FILE = """
    import comfy.model_management
    from comfy_api.latest import io


    def load(models, path):
        import comfy.utils
        comfy.model_management.load_models_gpu(models, force_full_load=True)
        bar = comfy.utils.ProgressBar(10)
        if hasattr(comfy.utils, "new_api"):
            comfy.utils.new_api()
        return comfy.utils.load_torch_file(path, safe_load=True), bar


    def inputs():
        return [io.Float.Input("x", default=1.0, display_mode="slider"), io.Float.Output(display_name="y")]


    def shadowed(comfy):
        return comfy.anything_at_all
"""


def test_synthetic_tree_reports_lost_keyword_and_name(tmp_path):
    checker = load_checker()
    tree, pack = str(tmp_path / "comfyui"), str(tmp_path / "pack")
    fake_tree(tree)
    pack_file = write(pack, "nodes/fake.py", PACK_FILE)
    result = checker.check(pack_files=[pack_file], comfy_root=tree, pack_root=pack)
    rows = {r["symbol"]: r for r in result["symbols"]}

    lost_keyword = rows["comfy.model_management.load_models_gpu"]
    assert lost_keyword["failing"] and "unknown keyword force_full_load" in lost_keyword["status"]
    assert lost_keyword["problem_sites"] == ["nodes/fake.py:8"]
    call = lost_keyword["calls"][0]
    assert call["positional"] == 1 and call["keywords"] == ["force_full_load"]

    lost_name = rows["comfy.utils.ProgressBar"]
    assert lost_name["failing"] and lost_name["status"].startswith("missing name")

    guarded = rows["comfy.utils.new_api"]
    assert not guarded["failing"] and "(guarded)" in guarded["status"]

    for ok in ("comfy.utils.load_torch_file", "comfy_api.latest.io.Float.Input", "comfy_api.latest.io.Float.Output",
               "comfy_api.latest.io", "comfy.model_management"):
        assert rows[ok]["status"] == "ok", rows[ok]
    assert not any("anything_at_all" in s for s in rows)
    assert result["failing"] == 2


def test_cli_exit_code_and_json(tmp_path):
    checker = load_checker()
    tree, pack = str(tmp_path / "comfyui"), str(tmp_path / "pack")
    fake_tree(tree)
    write(pack, "nodes/fake.py", PACK_FILE)
    out = tmp_path / "out.json"
    assert checker.main(["--comfyui", tree, "--pack", pack, "--json", str(out)]) == 1
    assert json.loads(out.read_text())["failing"] == 2
    write(tree, "comfy/utils.py", """
        def load_torch_file(ckpt, safe_load=False, device=None):
            pass

        class ProgressBar:
            def __init__(self, total):
                pass
    """)
    write(tree, "comfy/model_management.py", """
        def load_models_gpu(models, memory_required=0, force_full_load=False):
            pass
    """)
    assert checker.main(["--comfyui", tree, "--pack", pack]) == 0


def comparable(result):
    return {r["symbol"]: (r["status"], r["detail"], r["failing"], r["calls"]) for r in result["symbols"]}


@pytest.mark.host_independent  # a synthetic tree: never reads the test host
def test_skeletons_keep_what_the_check_reads(tmp_path):
    """A skeleton cuts function bodies but keeps signatures, imports, class attributes and instance stores: the check
    reports the same rows on it, the two failures included, and the bodies are really gone."""
    checker = load_checker()
    tree, pack, skel = str(tmp_path / "comfyui"), str(tmp_path / "pack"), str(tmp_path / "skeleton")
    fake_tree(tree)
    write(tree, "comfy/model_management.py", """
        def load_models_gpu(models, memory_required=0):
            total = sum(m.size for m in models)
            return total

        def get_torch_device():
            pass

        class LoadedModel:
            def __init__(self, model):
                self.model = model
                self._cache = {}
                self._cache["x"] = 1
    """)
    pack_file = write(pack, "nodes/fake.py", PACK_FILE + """

    def loaded(model):
        return comfy.model_management.LoadedModel(model).model, comfy.model_management.LoadedModel(model).missing
    """)
    full = checker.check(pack_files=[pack_file], comfy_root=tree, pack_root=pack)
    checker.write_skeletons(tree, full["host_files"], skel)
    cut = checker.check(pack_files=[pack_file], comfy_root=skel, pack_root=pack)
    assert comparable(cut) == comparable(full) and cut["failing"] == full["failing"] == 3
    rows = comparable(cut)
    assert rows["comfy.model_management.LoadedModel().model"][0] == "ok"
    assert rows["comfy.model_management.LoadedModel().missing"][0].startswith("missing name")
    text = open(os.path.join(skel, "comfy/model_management.py"), encoding="utf-8").read()
    assert "sum(" not in text and "self.model = model" in text and "self._cache = None" in text
    assert "_cache[" not in text


@pytest.mark.skipif(not os.path.isfile(os.path.join(COMFY_DIR, "nodes.py")), reason="no ComfyUI tree built")
def test_skeletons_of_the_test_tree_give_the_same_result(tmp_path):
    skel = tmp_path / "skeleton"
    full_json, cut_json = tmp_path / "full.json", tmp_path / "cut.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--comfyui", COMFY_DIR, "--json", str(full_json),
                           "--skeleton", str(skel)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    full = json.loads(full_json.read_text())
    assert "comfy/ldm/wan/model.py" in full["host_files"] and "comfyui_version.py" in full["host_files"]
    proc = subprocess.run([sys.executable, SCRIPT, "--comfyui", str(skel), "--json", str(cut_json)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cut = json.loads(cut_json.read_text())
    assert cut["version"] == full["version"] and cut["host_files"] == full["host_files"]
    assert comparable(cut) == comparable(full)
    size = lambda root: sum(os.path.getsize(os.path.join(root, f)) for f in full["host_files"])  # noqa: E731
    assert size(str(skel)) < 0.5 * size(COMFY_DIR)
