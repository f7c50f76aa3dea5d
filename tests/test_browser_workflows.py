"""Every shared workflow (UI format) loads in the real frontend, converts to an API prompt there, and runs.

For each file in example_workflows/: the page loads it, no node type is missing, the frontend converts it
(graphToPrompt, the Queue button's path) after CPU-sized widget values are set through the page's widgets, the Run
button queues it, it executes on the server with the tiny fixture models, a screenshot of the graph is kept under
test-artifacts/screenshots, and the browser console shows no error from the pack.
"""
import os
import sys

import pytest

from harness.paths import REPO
from harness.workflows import cpu_widget_settings, for_tiny_models, load, workflow_files

sys.path.insert(0, os.path.join(REPO, "scripts"))
from ui_workflow import ui_to_api  # noqa: E402

pytestmark = pytest.mark.server

FILES = workflow_files()


def test_there_are_workflows():
    assert FILES


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(p) for p in FILES])
def test_workflow_runs_from_the_browser(comfy, comfy_page, path):
    workflow = for_tiny_models(load(path))
    page = comfy_page
    page.clear_toasts()
    page.load_workflow(workflow)
    assert page.missing_node_types(workflow) == []
    assert page.toasts() == []
    for node_id, name, value in cpu_widget_settings(workflow):
        page.set_widget(node_id, name, value)
    prompt = page.api_prompt()
    assert {n["id"] for n in workflow["nodes"] if n.get("mode", 0) == 0} == {int(k) for k in prompt}
    # the demo's Python conversion (scripts/ui_workflow.py) agrees with the frontend's own
    serialized = page.page.evaluate("() => window.app.graph.serialize()")
    ours = ui_to_api(serialized, comfy.object_info())
    info = comfy.object_info()
    declared = {k: {name for section in ("required", "optional")
                    for name in info[v["class_type"]]["input"].get(section, {})}
                for k, v in prompt.items()}
    # frontend-only extras (e.g. LoadVideo's "video-preview") are not node inputs: the server ignores them too
    theirs = {k: {"class_type": v["class_type"], "inputs": {n: x for n, x in v["inputs"].items() if n in declared[k]}}
              for k, v in prompt.items()}
    for key in theirs:
        assert ours.get(key) == theirs[key], f"{key}: {ours.get(key)} != {theirs[key]}"
    assert ours == theirs
    name = os.path.splitext(os.path.basename(path))[0]
    page.screenshot(name)
    entry = page.run_and_wait()
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = entry["outputs"]
    assert outputs, "the workflow produced no outputs"
    for node_output in outputs.values():
        for image in node_output.get("images", []):
            folder = os.path.join(comfy.base, image.get("type", "output"))
            assert os.path.getsize(os.path.join(folder, image["subfolder"], image["filename"])) > 0
    assert page.pack_errors() == []


def test_workflows_listed_by_the_templates_browser(comfy):
    templates = comfy.get("/workflow_templates")
    ours = templates.get("ComfyUI-UniCascade")
    assert ours is not None, templates
    assert sorted(ours) == sorted(os.path.splitext(os.path.basename(p))[0] for p in FILES)
