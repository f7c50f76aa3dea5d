"""An official MfM pipeline folder on disk (diffusers layout, docs/mfm.md): finding it under ``models/mfm``,
its JSON files and its components' safetensors weights (a folder with only pickle files is refused: unpickling runs
code). Read by the pipeline, text-encoder and VAE loaders alike."""
from __future__ import annotations

import json
import os

COMPONENTS = ("transformer", "scheduler", "vae", "text_encoder", "tokenizer")


def pipeline_folders() -> list[str]:
    """Names (relative to a registered ``models/mfm`` folder) of sub-folders holding a model_index.json."""
    import folder_paths

    names = set()
    for base in folder_paths.get_folder_paths("mfm"):
        if not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base):
            if "model_index.json" in files:
                names.add(os.path.relpath(root, base))
                dirs[:] = []
    return sorted(names)


def resolve_folder(name: str) -> str:
    import folder_paths

    for base in folder_paths.get_folder_paths("mfm"):
        path = os.path.realpath(os.path.join(base, name))
        if os.path.isfile(os.path.join(path, "model_index.json")) and \
                os.path.commonpath([path, os.path.realpath(base)]) == os.path.realpath(base):
            return path
    raise ValueError(f"pipeline: '{name}' is not a folder with a model_index.json under models/mfm")


def read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{what}: {os.path.basename(path)} is missing") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: {os.path.basename(path)} is not valid JSON ({e})") from None


def check_components(folder: str) -> dict:
    index = read_json(os.path.join(folder, "model_index.json"), "pipeline")
    missing = [c for c in COMPONENTS if c not in index or not os.path.isdir(os.path.join(folder, c))]
    if missing:
        raise ValueError(f"pipeline {os.path.basename(folder)}: missing component(s) {', '.join(missing)} "
                         f"(model_index.json and a sub-folder each)")
    return index


def safetensors_files(component_dir: str, what: str) -> list[str]:
    """The component's weight files: the shards an index names, or every .safetensors file."""
    files = sorted(os.listdir(component_dir))
    index = [f for f in files if f.endswith(".safetensors.index.json")]
    if index:
        shards = sorted(set(read_json(os.path.join(component_dir, index[0]), what)["weight_map"].values()))
        absent = [s for s in shards if not os.path.isfile(os.path.join(component_dir, s))]
        if absent:
            raise ValueError(f"{what}: shard(s) {', '.join(absent)} named by {index[0]} are missing")
        return [os.path.join(component_dir, s) for s in shards]
    weights = [os.path.join(component_dir, f) for f in files if f.endswith(".safetensors")]
    if not weights:
        pickled = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        raise ValueError(f"{what}: no .safetensors weights"
                         + (f" (only pickle files {', '.join(pickled)}: convert them "
                            f"to safetensors; the pack never unpickles)" if pickled else ""))
    return weights


def load_state_dict(component_dir: str, what: str) -> dict:
    import comfy.utils

    sd = {}
    for path in safetensors_files(component_dir, what):
        try:
            sd.update(comfy.utils.load_torch_file(path, safe_load=True))
        except Exception as e:
            raise ValueError(f"{what}: cannot read {os.path.basename(path)} ({type(e).__name__}: {e})") from e
    return sd
