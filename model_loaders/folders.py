"""Model folders of the pack, registered with ComfyUI's ``folder_paths`` so ``extra_model_paths.yaml`` works.

Each key is a sub-folder of ComfyUI's ``models/``; a user can add more locations for the same key in
``extra_model_paths.yaml`` (e.g. ``unimmvsr: /data/checkpoints/unimmvsr``).
"""
from __future__ import annotations

import os

SAFETENSORS = {".safetensors", ".sft"}

# key -> (extensions, what lives there)
MODEL_FOLDERS: dict[str, tuple[set[str], str]] = {
    "unimmvsr": (SAFETENSORS, "UniMMVSR upscaler checkpoints (full weights or deltas over a Wan T2V checkpoint)"),
    "mfm": (SAFETENSORS | {".json"}, "MfM pipeline folders (transformer/, vae/, text_encoder/ ...)"),
    "depth_anything": (SAFETENSORS | {".json"}, "Depth Anything V2 Hugging Face folders"),
    "siglip": (SAFETENSORS | {".json"}, "SigLIP2 Hugging Face folders for keyframe retrieval"),
    "LLM": (SAFETENSORS | {".json", ".gguf"}, "local LLM / VLM folders (transformers layout or GGUF)"),
}


def register_model_folders() -> None:
    """Add each key once; keep paths a user or another pack already registered for it."""
    import folder_paths

    for key, (extensions, _) in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, key)
        if key in folder_paths.folder_names_and_paths:
            paths, exts = folder_paths.folder_names_and_paths[key]
            if default not in paths:
                paths.append(default)
            folder_paths.folder_names_and_paths[key] = (paths, set(exts) | extensions)
        else:
            folder_paths.folder_names_and_paths[key] = ([default], set(extensions))
