"""Depth Anything V2 loader: a Hugging Face folder under ``models/depth_anything`` → a model ComfyUI manages.

The transformers model is wrapped in a ``ModelPatcher`` with ComfyUI's load/offload devices (as core's
``comfy/clip_vision.py`` does), so ComfyUI moves it, evicts it under memory pressure and "unload models" frees it.
Only ``*.safetensors`` weights are read (pickled checkpoints are never opened). A folder asked for again with the
same precision while its loaded model is still alive (ComfyUI's node cache holds it) is not read from disk again.
"""
from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch

from ..core.depth.preprocess import PreprocessConfig, depth_to_frame_size, preprocess
from ..core.model_folders import check_safetensors, list_folders, read_config, resolve, signature
from .transformers_models import choose_dtype, dtype_kwargs, managed

FOLDER_KEY = "depth_anything"
MODEL_TYPE = "depth_anything"
# Frames per micro-batch by default. Batches are how a GPU is kept busy. On a CPU they cost: a batch's neck and
# head activations (85–170 MB each for 8 frames at 266 px; 21 MB at most for one) are above glibc's 32 MB mmap
# threshold, so each is mapped afresh and faulted in by the kernel on every call (45k minor faults and 81 ms of
# system time per frame at batch 8, 2 ms at batch 1) for no gain in compute: batch 8 ran at 0.81× the frames/s of
# batch 1 on 2 CPU cores (benchmarks/depth_throughput.py; docs/experiments.md).
GPU_BATCH = 8
CPU_BATCH = 1



@dataclass(eq=False)
class DepthAnythingModel:
    """What the loader outputs: the managed model, its preprocessing and where it came from."""
    patcher: comfy.model_patcher.ModelPatcher
    preprocess: PreprocessConfig
    folder: str
    dtype: torch.dtype

    def estimate(self, frames: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Raw relative inverse depth [T, H, W] float32 on the CPU for IMAGE frames [T, H, W, 3].

        Frames go through in micro-batches (default: default_batch_size of the model's load device); only the
        [T, H, W] result accumulates. The progress bar counts frames and is where a Stop takes effect."""
        check_frames(frames)
        if batch_size is None:
            batch_size = default_batch_size(self.patcher.load_device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        # Full load: transformers' modules are not comfy.ops, so a partial (lowvram) load would leave some behind.
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        net, device = self.patcher.model.net, self.patcher.load_device
        count, height, width = frames.shape[:3]
        depth = torch.empty(count, height, width, dtype=torch.float32)
        bar = comfy.utils.ProgressBar(count)
        with torch.inference_mode():
            for start in range(0, count, batch_size):
                chunk = frames[start:start + batch_size]
                pixels = preprocess(chunk.to(device), self.preprocess).to(self.dtype)
                predicted = net(pixel_values=pixels).predicted_depth
                depth[start:start + len(chunk)] = depth_to_frame_size(predicted, height, width).cpu()
                bar.update(len(chunk))
        return depth


def default_batch_size(device) -> int:
    """Frames per micro-batch unless told otherwise, on ``device`` (a torch.device or its name): CPU_BATCH on a
    CPU, GPU_BATCH on anything else (CUDA, ROCm, XPU, MPS …)."""
    return CPU_BATCH if torch.device(device).type == "cpu" else GPU_BATCH


def check_frames(frames) -> None:
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"images: expected an IMAGE tensor [frames, height, width, 3], got {type(frames).__name__}")
    if frames.ndim != 4:
        raise ValueError("images: expected an IMAGE tensor [frames, height, width, 3], "
                         f"got shape {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("images: the batch is empty (0 frames), there is nothing to estimate depth from")
    if frames.shape[-1] != 3:
        raise ValueError(f"images: frames have {frames.shape[-1]} channels; Depth Anything needs RGB images "
                         f"(3 channels)")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"images: frames are {frames.shape[2]}×{frames.shape[1]} pixels")


def estimate_depth(depth_model, frames: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Raw depth [T, H, W] (CPU) of IMAGE frames with a model from the Depth Anything loader."""
    if not isinstance(depth_model, DepthAnythingModel):
        raise TypeError(f"depth_model: expected the output of the UniCascade Depth Anything loader, got "
                        f"{type(depth_model).__name__}")
    return depth_model.estimate(frames, batch_size)


# -- folders ------------------------------------------------------------------------------------------------
def model_roots() -> list[str]:
    import folder_paths

    return folder_paths.get_folder_paths(FOLDER_KEY)


def list_models() -> list[str]:
    """Sub-folders holding a config.json, over every registered location (the first one wins a name)."""
    return list_folders(model_roots())


def resolve_folder(name: str) -> str:
    return resolve(name, model_roots(), gguf=False)[0]


def check_folder(folder: str) -> list[str]:
    """Refuse what is not a Depth Anything folder with safetensors weights; return the weight files."""
    found = read_config(folder).get("model_type")
    if found != MODEL_TYPE:
        raise ValueError(f"{folder}: config.json describes a {found!r} model, not Depth Anything "
                         f"(model_type {MODEL_TYPE!r})")
    return check_safetensors(folder)


_LOADED: "weakref.WeakValueDictionary[tuple, DepthAnythingModel]" = weakref.WeakValueDictionary()


def load_depth_model(name: str, precision: str) -> DepthAnythingModel:
    folder = resolve_folder(name)
    weights = check_folder(folder)
    dtype = choose_dtype(precision, comfy.model_management.get_torch_device())
    key = (os.path.realpath(folder), dtype, signature(folder, ["config.json", *weights]))
    cached = _LOADED.get(key)
    if cached is not None:
        return cached
    config = PreprocessConfig.from_folder(folder)
    if config is None:
        logging.warning("UniCascade: %s has no preprocessor_config.json; using Depth Anything V2's values", folder)
        config = PreprocessConfig()
    logging.info("UniCascade: loading Depth Anything from %s (%s)", folder, str(dtype).removeprefix("torch."))
    patcher = managed(_from_pretrained(folder, dtype))
    model = DepthAnythingModel(patcher=patcher, preprocess=config, folder=folder, dtype=dtype)
    _LOADED[key] = model
    return model


def _from_pretrained(folder: str, dtype: torch.dtype):
    from transformers import AutoModelForDepthEstimation

    try:
        return AutoModelForDepthEstimation.from_pretrained(folder, use_safetensors=True, local_files_only=True,
                                                           **dtype_kwargs(dtype))
    except Exception as e:
        raise RuntimeError(f"could not load Depth Anything from {folder}: {e}") from e
