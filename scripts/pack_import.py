"""Import this pack as a package under a chosen name, the way ComfyUI imports a custom node folder (relative
imports and all) — for the training CLI, tests and benchmarks that run outside ComfyUI's server."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_pack(name: str):
    """The pack's root package, imported once as ``name``. ComfyUI's folder must already be on sys.path."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "__init__.py"),
                                                      submodule_search_locations=[REPO])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pack_submodule(name: str, submodule: str):
    import_pack(name)
    return importlib.import_module(f"{name}.{submodule}")
