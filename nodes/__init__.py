"""ComfyUI nodes of the pack: thin V3 nodes over core/ and samplers/.

Every io.ComfyNode subclass defined in one of NODE_MODULES is registered, its ``execute`` raising the pack's own
exceptions as plain builtin types (kit.py) so that users read a message, not a module path.
"""
from __future__ import annotations

import importlib
import inspect

from comfy_api.latest import ComfyExtension, io

from ..kit import plain_errors

PACK = __name__.rsplit(".", 1)[0]

NODE_MODULES = [
    "nodes.tma_boost",
    "nodes.taca_boost",
    "nodes.tma_schedule_preview",
    "nodes.attention_backend",
    "nodes.depth_estimator",
    "nodes.mfm_condition",
    "nodes.reflection_models",
    "nodes.pyramid_reflection",
    "nodes.mfm_pipeline",
    "nodes.mfm_apply",
    "nodes.mfm_assemble",
    "nodes.unimmvsr_loaders",
    "nodes.unimmvsr_upsampler",
    "nodes.unimmvsr_references",
    "nodes.unimmvsr_guider",
    "nodes.unimmvsr_start_from_lr",
    "nodes.unimmvsr_multi_gpu",
    "nodes.unimmvsr_self_ensemble",
]


def node_classes() -> list[type[io.ComfyNode]]:
    found = []
    for name in NODE_MODULES:
        module = importlib.import_module(f"{PACK}.{name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, io.ComfyNode) and obj.__module__ == module.__name__:
                execute = obj.__dict__.get("execute")
                if isinstance(execute, classmethod) and not getattr(execute.__func__, "plain_errors", False):
                    obj.execute = classmethod(plain_errors(execute.__func__))
                found.append(obj)
    return found


class UniCascadeExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .unimmvsr_multi_gpu import register_routes

        register_routes()  # ComfyUI 0.3.75 calls this once, before it adds the routes to its app
        return node_classes()
