"""UniCascade: cascaded multi-modal video generation for ComfyUI (UniMMVSR, MfM, UniVid TMA + Pyramid Reflection).

Kept thin and cheap at import: model folders are registered, nodes are imported when ComfyUI asks for them, and
heavy libraries are imported inside the nodes that need them.
"""
WEB_DIRECTORY = "./js"

try:
    import folder_paths  # noqa: F401  (present only inside ComfyUI)
except ImportError:  # imported standalone (tests of core/, benchmarks): nothing to register
    folder_paths = None

if folder_paths is not None:
    from .model_loaders.folders import register_model_folders

    register_model_folders()


async def comfy_entrypoint():
    from .nodes import UniCascadeExtension

    return UniCascadeExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
