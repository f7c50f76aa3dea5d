"""Where things are: the repo, the built ComfyUI tree, the venv."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY_DIR = os.environ.get("UNICASCADE_COMFYUI_DIR", os.path.join(REPO, ".build", "comfyui"))
PYTHON = sys.executable


def use_comfy_in_process() -> None:
    """Make ComfyUI's packages importable here, on the CPU (as the server runs in tests)."""
    if COMFY_DIR not in sys.path:
        sys.path.insert(0, COMFY_DIR)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True


def load_pack(sdpa: bool = False):
    """ComfyUI importable here on the CPU, and the pack's module getter (``pack("nodes.tma_boost")``): the one way
    benchmarks and scripts import the pack in-process. ``sdpa``: ComfyUI's PyTorch SDPA attention (its usual path
    on a GPU) instead of what it picks for a CPU."""
    use_comfy_in_process()
    if sdpa:
        import comfy.cli_args

        comfy.cli_args.args.use_pytorch_cross_attention = True
    return pack_module


PACK_MODULE = "unicascade_pack"


def pack_module(name: str):
    """A module of the pack (e.g. "nodes.tma_boost"), the pack imported once as a package the way ComfyUI imports
    it (relative imports and all). Call use_comfy_in_process() first."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        from pack_import import pack_submodule
    finally:
        sys.path.pop(0)
    return pack_submodule(PACK_MODULE, name)
