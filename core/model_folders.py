"""Hugging Face model folders of the loaders (Depth Anything, SigLIP2, LLMs): listing, safe name resolution, and
the checks made before transformers reads anything — safetensors weights only (pickled checkpoints are never
opened), GGUF files only for GGUF models."""
from __future__ import annotations

import json
import os

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
GGUF = ".gguf"


def list_folders(roots: list[str]) -> list[str]:
    """Sub-folders holding a config.json over every root (the first root wins a name)."""
    names: list[str] = []
    for root in roots:
        if os.path.isdir(root):
            for entry in sorted(os.listdir(root)):
                if entry not in names and os.path.isfile(os.path.join(root, entry, "config.json")):
                    names.append(entry)
    return names


def list_gguf(roots: list[str]) -> list[str]:
    """GGUF files directly in a root ('name.gguf') or one folder down ('folder/name.gguf')."""
    names: list[str] = []
    for root in roots:
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.listdir(root)):
            path = os.path.join(root, entry)
            if entry.endswith(GGUF) and os.path.isfile(path):
                names.append(entry)
            elif os.path.isdir(path):
                names += [f"{entry}/{f}" for f in sorted(os.listdir(path)) if f.endswith(GGUF)]
    return list(dict.fromkeys(names))


def _safe_parts(name: str, field: str, gguf: bool) -> list[str]:
    parts = str(name).replace("\\", "/").split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or os.path.isabs(name) or len(parts) > (2 if gguf else 1):
        raise ValueError(f"{field}: {name!r} is not a " + ("model name from the list" if gguf else "folder name"))
    return parts


def resolve(name: str, roots: list[str], field: str = "model_name", gguf: bool = True) -> tuple[str, str | None]:
    """(folder, gguf file name or None) for a listed name; FileNotFoundError naming the roots otherwise.
    ``gguf=False``: only Hugging Face folders are accepted."""
    parts = _safe_parts(name, field, gguf)
    for root in roots:
        path = os.path.join(root, *parts)
        if parts[-1].endswith(GGUF):
            if gguf and os.path.isfile(path):
                return os.path.dirname(path), parts[-1]
        elif len(parts) == 1 and os.path.isfile(os.path.join(path, "config.json")):
            return path, None
    where = ", ".join(roots) or "(no folders registered)"
    if not gguf:
        raise FileNotFoundError(f"{field}: no folder {name!r} with a config.json in {where}")
    raise FileNotFoundError(f"{field}: no model {name!r} (a folder with config.json, or a .gguf file) in {where}")


def read_config(folder: str) -> dict:
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder}/config.json is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{folder}/config.json does not describe a model")
    return config


def check_safetensors(folder: str) -> list[str]:
    """The folder's *.safetensors files, each opened to check its header; refuse folders without them."""
    files = sorted(os.listdir(folder))
    weights = [f for f in files if f.endswith(".safetensors")]
    if not weights:
        pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        seen = f" (found {', '.join(pickles)})" if pickles else ""
        raise ValueError(f"{folder}: no .safetensors weights{seen}; only safetensors are loaded, pickled "
                         "checkpoints are never opened")
    from safetensors import safe_open

    for name in weights:
        try:
            with safe_open(os.path.join(folder, name), framework="pt") as f:
                f.keys()
        except Exception as e:
            raise ValueError(f"{folder}/{name} is truncated or corrupt ({e}); download it again") from None
    return weights


def check_gguf(path: str) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (it does not start with 'GGUF')")


def signature(folder: str, files: list[str]) -> tuple:
    """Changes when any of the files changes (size or modification time)."""
    stats = [os.stat(os.path.join(folder, name)) for name in files]
    return tuple((s.st_mtime_ns, s.st_size) for s in stats)


def fingerprint(name: str, roots: list[str]) -> tuple | None:
    """Signature of a listed model's files (config + safetensors, or the GGUF), None when it cannot be read."""
    try:
        folder, gguf = resolve(name, roots)
        files = [gguf] if gguf else ["config.json"] + sorted(f for f in os.listdir(folder)
                                                             if f.endswith(".safetensors"))
        return signature(folder, files)
    except (OSError, ValueError):
        return None
