"""Fitting inputs into MfM's canvas, as the official pipeline does (``pipeline_mfm.py``; docs/mfm.md "Fitting").

- The box is ``width × height``; a portrait input (narrower than tall) swaps it, whatever its orientation —
  the official rule (a box the user made portrait turns landscape for a portrait input) — unless
  ``swap_portrait`` is off (the official ``keep_ratio_h``).
- ``pad`` (official ``keep_ratio``, its default): scale to fit inside the box, keep the ratio, round the scaled
  size down to multiples of 16, centre it on a black canvas; the padding is marked *to be generated* (mask 0).
- ``keep_res`` (official ``keep_res``, the mode its README runs): the same fitted size, and the canvas is that
  size — nothing is padded.
- ``crop``: scale to cover the box and centre-crop (not in the official script; offered for inputs whose
  borders need not be regenerated).
- ``stretch``: resize to the box.

Resizing is Pillow's bicubic on 8-bit frames, as the official code resizes its PIL images.
Frames are ComfyUI IMAGE tensors [T, H, W, C] in [0, 1]; masks [T, H, W] in [0, 1] with 1 = keep/known.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FIT_MODES = ("pad", "keep_res", "crop", "stretch")


@dataclass(frozen=True)
class Placement:
    canvas_width: int
    canvas_height: int
    left: int
    top: int
    width: int      # of the placed content inside the canvas (crop: the canvas itself)
    height: int
    swapped: bool


def box_for(image_width: int, image_height: int, width: int, height: int, swap_portrait: bool = True):
    """The (width, height) box after the official portrait swap: every portrait input swaps it."""
    if swap_portrait and image_width < image_height:
        return height, width, True
    return width, height, False


def plan(image_width: int, image_height: int, width: int, height: int, mode: str = "pad",
         swap_portrait: bool = True) -> Placement:
    if mode not in FIT_MODES:
        raise ValueError(f"fit mode {mode!r} is not one of {', '.join(FIT_MODES)}")
    if image_width < 1 or image_height < 1:
        raise ValueError(f"cannot fit an empty {image_width}×{image_height} frame")
    box_w, box_h, swapped = box_for(image_width, image_height, width, height, swap_portrait)
    box_w, box_h = box_w // 16 * 16, box_h // 16 * 16
    if box_w < 16 or box_h < 16:
        raise ValueError(f"a {width}×{height} canvas is smaller than 16×16 after rounding to multiples of 16")
    if mode == "stretch":
        return Placement(box_w, box_h, 0, 0, box_w, box_h, swapped)
    if mode in ("pad", "keep_res"):
        scale = min(box_w / image_width, box_h / image_height)
        w = max(16, round(image_width * scale) // 16 * 16)
        h = max(16, round(image_height * scale) // 16 * 16)
        if mode == "keep_res":
            return Placement(w, h, 0, 0, w, h, swapped)
        return Placement(box_w, box_h, (box_w - w) // 2, (box_h - h) // 2, w, h, swapped)
    scale = max(box_w / image_width, box_h / image_height)
    w, h = max(box_w, round(image_width * scale)), max(box_h, round(image_height * scale))
    return Placement(box_w, box_h, -((w - box_w) // 2), -((h - box_h) // 2), w, h, swapped)


def resize(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[T, H, W, C] → [T, height, width, C] as the official code resizes: each frame an 8-bit PIL image (C = 3:
    RGB, C = 1: a mask), Pillow's bicubic, back to [0, 1]."""
    if frames.shape[1] == height and frames.shape[2] == width:
        return frames
    from PIL import Image

    out = []
    for frame in frames:
        pixels = (frame.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        resized = np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))
        out.append(torch.from_numpy(resized.reshape(height, width, -1).copy()))
    return (torch.stack(out).float() / 255.0).to(frames.dtype)


def place(frames: torch.Tensor, p: Placement, fill: float = 0.0) -> torch.Tensor:
    """Resize [T, H, W, C] frames to the planned size and put them on the canvas (fill elsewhere)."""
    scaled = resize(frames, p.width, p.height)
    canvas = torch.full((frames.shape[0], p.canvas_height, p.canvas_width, frames.shape[-1]), fill,
                        dtype=frames.dtype)
    src_top, src_left = max(0, -p.top), max(0, -p.left)
    dst_top, dst_left = max(0, p.top), max(0, p.left)
    h = min(p.height - src_top, p.canvas_height - dst_top)
    w = min(p.width - src_left, p.canvas_width - dst_left)
    canvas[:, dst_top:dst_top + h, dst_left:dst_left + w] = scaled[:, src_top:src_top + h, src_left:src_left + w]
    return canvas


def place_mask(mask: torch.Tensor, p: Placement) -> torch.Tensor:
    """A keep mask [T, H, W] on the canvas: the padding is 0 (to be generated). Bicubic resizing leaves soft
    edges as the official code does; values within 1e-5 of 0 or 1 are snapped so solid regions stay exact."""
    m = place(mask.float().unsqueeze(-1), p, fill=0.0).squeeze(-1)
    return torch.where(m > 1 - 1e-5, torch.ones_like(m), torch.where(m < 1e-5, torch.zeros_like(m), m))
