"""Shared by the loaders of transformers models (Depth Anything, SigLIP2, LLMs): the precision choice and the
ModelPatcher wrapping that lets ComfyUI's memory manager load, offload and evict them."""
from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import torch

from ..kit import require_choice

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Holder(torch.nn.Module):
    """Gives ModelPatcher a plain module: it sets ``.device`` on its model, a read-only property of transformers'."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net


def choose_dtype(precision: str, device) -> torch.dtype:
    require_choice("precision", precision, PRECISIONS)
    if precision != "auto":
        return DTYPES[precision]
    if comfy.model_management.should_use_fp16(device):
        return torch.float16
    if comfy.model_management.should_use_bf16(device):
        return torch.bfloat16
    return torch.float32


def managed(net: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    """The model on ComfyUI's offload device, in a ModelPatcher with ComfyUI's load/offload devices."""
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    net = net.to(offload_device).eval().requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(Holder(net), load_device=load_device, offload_device=offload_device)


def dtype_kwargs(dtype: torch.dtype) -> dict:
    import transformers

    old = tuple(int(p) for p in transformers.__version__.split(".")[:2]) < (4, 56)
    return {"torch_dtype" if old else "dtype": dtype}
