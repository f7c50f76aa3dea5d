"""ComfyUI nodes of the pack: thin V3 nodes over core/ and samplers/.

Every io.ComfyNode subclass defined in one of NODE_MODULES is registered; a module listed here that is not
present (a capability not installed yet) is skipped, but an import error inside a present module is raised.
"""
from __future__ import annotations

import importlib
import inspect
import os

from comfy_api.latest import ComfyExtension, io

PACK = __name__.rsplit(".", 1)[0]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NODE_MODULES = [
    "nodes.tma_boost",
    "nodes.taca_boost",
    "nodes.tma_schedule_preview",
    "model_loaders.depth_anything",
    "nodes.depth_estimator",
    "nodes.mfm_condition",
    "model_loaders.siglip",
    "model_loaders.llm",
    "nodes.pyramid_reflection",
    "model_loaders.unimmvsr",
    "nodes.unimmvsr_upsampler",
    "nodes.unimmvsr_references",
    "nodes.unimmvsr_guider",
]


def node_classes() -> list[type[io.ComfyNode]]:
    found = []
    for name in NODE_MODULES:
        if not os.path.exists(os.path.join(ROOT, *name.split(".")) + ".py"):
            continue
        module = importlib.import_module(f"{PACK}.{name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, io.ComfyNode) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


class UniCascadeExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_classes()
