"""The DPT image processor's preprocessing on tensors, driven by a folder's ``preprocessor_config.json``.

Same steps as transformers' ``DPTImageProcessor`` (torchvision backend): resize keeping the aspect ratio (the side
that needs the smaller change decides the scale) to multiples of ``ensure_multiple_of``, with the configured
filter (antialiased); rescale; normalise with the configured mean/std; optional centre padding to ``size_divisor``.
Frames are ComfyUI IMAGE tensors [B, H, W, 3] in [0, 1], resized as floats (as the processor resizes float
input, and Depth Anything's own code its float frames): no 8-bit rounding or clamping of the filter's overshoot.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# PIL resample codes (as saved in preprocessor_config.json) → torch interpolate modes (antialias for the filters).
RESAMPLE_MODES = {0: ("nearest-exact", False), 2: ("bilinear", True), 3: ("bicubic", True)}
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
PROCESSOR_TYPES = ("DPTImageProcessor", "DPTImageProcessorFast", "DPTImageProcessorPil")


@dataclass(frozen=True)
class PreprocessConfig:
    """Depth-Anything-V2 values are the defaults (its published ``preprocessor_config.json``)."""
    height: int = 518
    width: int = 518
    ensure_multiple_of: int = 14
    keep_aspect_ratio: bool = True
    resample: int = 3
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    do_pad: bool = False
    size_divisor: int | None = None

    @classmethod
    def from_dict(cls, values: dict) -> "PreprocessConfig":
        kind = values.get("image_processor_type", PROCESSOR_TYPES[0])
        if kind not in PROCESSOR_TYPES:
            raise ValueError(f"preprocessor_config.json is for a {kind}, not a DPTImageProcessor (Depth Anything)")
        size = values.get("size", {"height": cls.height, "width": cls.width})
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if "height" not in size or "width" not in size:
            raise ValueError(f"preprocessor_config.json: size must give height and width, got {size}")
        resample = int(values.get("resample", cls.resample))
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"preprocessor_config.json: resample {resample} "
                             f"({RESAMPLE_NAMES.get(resample, 'unknown')}) is not supported; use 3 (bicubic, as "
                             f"Depth Anything), 2 (bilinear) or 0 (nearest)")
        config = cls(height=int(size["height"]), width=int(size["width"]),
                     ensure_multiple_of=int(values.get("ensure_multiple_of") or 1),
                     keep_aspect_ratio=bool(values.get("keep_aspect_ratio", cls.keep_aspect_ratio)),
                     resample=resample, do_resize=bool(values.get("do_resize", True)),
                     do_rescale=bool(values.get("do_rescale", True)),
                     rescale_factor=float(values.get("rescale_factor", cls.rescale_factor)),
                     do_normalize=bool(values.get("do_normalize", True)),
                     image_mean=_triple(values.get("image_mean", cls.image_mean), "image_mean"),
                     image_std=_triple(values.get("image_std", cls.image_std), "image_std"),
                     do_pad=bool(values.get("do_pad", False)), size_divisor=values.get("size_divisor"))
        if config.height < 1 or config.width < 1 or config.ensure_multiple_of < 1:
            raise ValueError(f"preprocessor_config.json: size {size} and ensure_multiple_of "
                             f"{config.ensure_multiple_of} must be positive")
        if config.do_pad and not config.size_divisor:
            raise ValueError("preprocessor_config.json: do_pad needs a size_divisor")
        return config

    @classmethod
    def from_folder(cls, folder: str) -> "PreprocessConfig | None":
        """The folder's config, or None when it has no ``preprocessor_config.json``."""
        path = os.path.join(folder, "preprocessor_config.json")
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(values)


def _triple(values, name: str) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        values = [values] * 3
    if len(values) != 3:
        raise ValueError(f"preprocessor_config.json: {name} needs 3 values (RGB), got {values}")
    return tuple(float(v) for v in values)


def _to_multiple(value: float, multiple: int) -> int:
    """Nearest multiple; never 0 (then the next one up)."""
    rounded = round(value / multiple) * multiple
    return rounded if rounded > 0 else math.ceil(value / multiple) * multiple


def processed_size(height: int, width: int, config: PreprocessConfig) -> tuple[int, int]:
    """(height, width) the model sees for a frame of ``height × width``."""
    height, width = _resized_size(height, width, config)
    if config.do_pad:
        divisor = int(config.size_divisor)
        return math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor
    return height, width


def _resized_size(height: int, width: int, config: PreprocessConfig) -> tuple[int, int]:
    if not config.do_resize:
        return height, width
    scale_h, scale_w = config.height / height, config.width / width
    if config.keep_aspect_ratio:  # scale as little as possible
        scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    return (_to_multiple(scale_h * height, config.ensure_multiple_of),
            _to_multiple(scale_w * width, config.ensure_multiple_of))


def preprocess(frames: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """[B, H, W, 3] in [0, 1] → pixel_values [B, 3, h, w] float32 on the frames' device."""
    x = frames.float().movedim(-1, 1)
    size = _resized_size(x.shape[2], x.shape[3], config)
    if size != tuple(x.shape[2:]):
        mode, antialias = RESAMPLE_MODES[config.resample]
        corners = None if mode.startswith("nearest") else False
        x = F.interpolate(x, size=size, mode=mode, antialias=antialias, align_corners=corners)
    x = x * (255.0 * config.rescale_factor if config.do_rescale else 255.0)
    if config.do_normalize:
        mean = torch.tensor(config.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(config.image_std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    if config.do_pad:  # centred zeros up to processed_size
        height, width = processed_size(frames.shape[1], frames.shape[2], config)
        top, left = (height - x.shape[2]) // 2, (width - x.shape[3]) // 2
        x = F.pad(x, [left, width - x.shape[3] - left, top, height - x.shape[2] - top])
    return x


def depth_to_frame_size(predicted: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """predicted_depth [b, h, w] → [b, height, width] float32, bicubic (align_corners=False) as transformers'
    ``post_process_depth_estimation``."""
    depth = predicted.float().unsqueeze(1)
    if tuple(depth.shape[2:]) != (height, width):
        depth = F.interpolate(depth, size=(height, width), mode="bicubic", align_corners=False)
    return depth.squeeze(1)
