"""Tiny, randomly initialised Depth Anything V2 folders (transformers' real classes), written as Hugging Face folders
where the pack's loader reads them (``models/depth_anything/<name>``), plus broken folders for error tests.

Random weights get fan-in scaled values (transformers' default init, std 0.02, makes every output ~1e-8), so the
predicted depth differs clearly between frames.
"""
from __future__ import annotations

import os

import torch

TINY = "tiny-depth-anything-v2"
WRONG_TYPE = "not-depth-siglip"
TRUNCATED = "truncated-depth-anything-v2"
PICKLE_ONLY = "pickle-only-depth-anything-v2"

# Depth-Anything-V2's published preprocessing, with a small size.
PREPROCESSOR = dict(do_resize=True, size={"height": 56, "width": 56}, resample=3, keep_aspect_ratio=True,
                    ensure_multiple_of=14, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                    image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_pad=False)


def build_depth_anything(hidden: int = 32, layers: int = 4, heads: int = 2, neck: tuple = (8, 16, 32, 32),
                         fusion: int = 16, head: int = 8, seed: int = 0):
    """DepthAnythingForDepthEstimation on a Dinov2 backbone read out at layers 1–4 (V2 Small reads 4 of 12)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=4,
                            patch_size=14, image_size=518, out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
                            apply_layernorm=True)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=hidden,
                                 neck_hidden_sizes=list(neck), fusion_hidden_size=fusion, head_hidden_size=head,
                                 depth_estimation_type="relative")
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=generator)
            elif name.endswith("lambda1") or ("norm" in name and name.endswith("weight")):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.05, generator=generator)
        model.head.conv3.bias.fill_(1.0)  # the relative head ends in a ReLU: keep most of the map above 0
    return model


def write_depth_anything(folder: str, preprocessor: dict | None = None, **model_kwargs) -> str:
    """config.json + model.safetensors + preprocessor_config.json."""
    from transformers import DPTImageProcessor

    os.makedirs(folder, exist_ok=True)
    build_depth_anything(**model_kwargs).save_pretrained(folder, safe_serialization=True)
    DPTImageProcessor(**(preprocessor or PREPROCESSOR)).save_pretrained(folder)
    return folder


def write_wrong_type(folder: str) -> str:
    """A tiny SigLIP (model_type 'siglip'): a real model folder, but not Depth Anything."""
    from transformers import SiglipConfig, SiglipModel, SiglipTextConfig, SiglipVisionConfig

    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    text = SiglipTextConfig(vocab_size=64, max_position_embeddings=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                            **small)
    config = SiglipConfig(text_config=text, vision_config=SiglipVisionConfig(image_size=28, patch_size=14, **small))
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def write_truncated(folder: str) -> str:
    """A Depth Anything folder whose model.safetensors lost its second half (an interrupted download)."""
    write_depth_anything(folder)
    path = os.path.join(folder, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    return folder


def write_pickle_only(folder: str) -> str:
    """A Depth Anything config with only a pytorch_model.bin (never opened: its bytes are not even a pickle)."""
    from transformers import DepthAnythingConfig

    os.makedirs(folder, exist_ok=True)
    DepthAnythingConfig().save_pretrained(folder)
    with open(os.path.join(folder, "pytorch_model.bin"), "wb") as f:
        f.write(b"not a checkpoint")
    return folder


def write_depth_fixture_models(depth_dir: str) -> dict[str, str]:
    """Every fixture folder under ``depth_dir`` (a ``models/depth_anything``). Returns name -> folder."""
    writers = {TINY: write_depth_anything, WRONG_TYPE: write_wrong_type, TRUNCATED: write_truncated,
               PICKLE_ONLY: write_pickle_only}
    folders = {}
    for name, write in writers.items():
        folders[name] = os.path.join(depth_dir, name)
        if not os.path.isfile(os.path.join(folders[name], "config.json")):
            write(folders[name])
    return folders


PUBLISHED_NAME = "Depth-Anything-V2-Small-hf"  # the folder name shared workflows use


def write_depth_fixtures(base: str) -> dict[str, str]:
    """For tests/conftest.py: the fixture folders in ``<base>/models/depth_anything`` of a ComfyUI base directory,
    the tiny model also under the published model's folder name."""
    folder = os.path.join(base, "models", "depth_anything")
    paths = write_depth_fixture_models(folder)
    published = os.path.join(folder, PUBLISHED_NAME)
    if not os.path.lexists(published):
        os.symlink(os.path.join(folder, TINY), published)
    return paths
