"""Shared workflow files and how tests run them on the tiny fixture models."""
from __future__ import annotations

import copy
import glob
import json
import os

from .paths import REPO

WORKFLOW_DIR = os.path.join(REPO, "example_workflows")
TINY_TEXT_ENCODER_LOADER = "UniCascadeTestTinyTextEncoderLoader"

# Widget values a CPU can afford; set through the page's widgets, as a user would.
CPU_WIDGETS = {
    "EmptyHunyuanLatentVideo": {"width": 64, "height": 48, "length": 9},
    "UniCascadeMfMCondition": {"width": 64, "height": 48, "frames": 9},
    "UniCascadeUniMMVSRUpsampler": {"width": 128, "height": 96},
    "UniCascadeUniMMVSRReferences": {"width": 128, "height": 96},
    "KSampler": {"steps": 3},
    "KSamplerAdvanced": {"steps": 3},
    "BasicScheduler": {"steps": 3},
    "UniCascadePyramidReflectionQA": {"max_new_tokens": 16},
}


def workflow_files() -> list[str]:
    return sorted(glob.glob(os.path.join(WORKFLOW_DIR, "*.json")))


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def for_tiny_models(workflow: dict) -> dict:
    """The fixture files carry the real file names; only umt5-xxl's loader is swapped (docs/design.md §12: the stock
    CLIPLoader builds it at full size). The fixture loader takes the same widget values."""
    wf = copy.deepcopy(workflow)
    for node in wf["nodes"]:
        if node["type"] == "CLIPLoader":
            node["type"] = TINY_TEXT_ENCODER_LOADER
            node["properties"]["Node name for S&R"] = TINY_TEXT_ENCODER_LOADER
    return wf


def cpu_widget_settings(workflow: dict) -> list[tuple[int, str, object]]:
    return [(node["id"], name, value) for node in workflow["nodes"]
            for name, value in CPU_WIDGETS.get(node["type"], {}).items()]
