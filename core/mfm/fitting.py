"""Fitting inputs into MfM's canvas, as the official pipeline does (SPEC §2, official ``pipeline_mfm.py``).

- The box is ``width × height``; a portrait input (narrower than tall) swaps a landscape box, unless
  ``swap_portrait`` is off (the official ``keep_ratio_h``). The official script swaps for every portrait input;
  with its landscape default box that is the same rule, and a box the user already made portrait is kept.
- ``pad`` (official ``keep_ratio``): scale to fit inside the box, keep the ratio, round the scaled size down to
  multiples of 16, centre it on a black canvas; the padding is marked *to be generated* (keep mask 0).
- ``crop``: scale to cover the box and centre-crop (not in the official script; offered for inputs whose
  borders need not be regenerated).
- ``stretch``: resize to the box (the official image-colorization path does this first).

Resizing is bicubic with antialiasing (the official code resizes PIL images with their bicubic default).
Frames are ComfyUI IMAGE tensors [T, H, W, C] in [0, 1]; masks [T, H, W] in [0, 1] with 1 = keep/known.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FIT_MODES = ("pad", "crop", "stretch")


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
    """The (width, height) box after the official portrait swap."""
    if swap_portrait and image_width < image_height and width > height:
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
    if mode == "pad":
        scale = min(box_w / image_width, box_h / image_height)
        w = max(16, round(image_width * scale) // 16 * 16)
        h = max(16, round(image_height * scale) // 16 * 16)
        return Placement(box_w, box_h, (box_w - w) // 2, (box_h - h) // 2, w, h, swapped)
    scale = max(box_w / image_width, box_h / image_height)
    w, h = max(box_w, round(image_width * scale)), max(box_h, round(image_height * scale))
    return Placement(box_w, box_h, -((w - box_w) // 2), -((h - box_h) // 2), w, h, swapped)


def resize(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[T, H, W, C] → [T, height, width, C], bicubic + antialias, clamped to [0, 1]."""
    if frames.shape[1] == height and frames.shape[2] == width:
        return frames
    x = frames.movedim(-1, 1).float()
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0, 1).movedim(1, -1).to(frames.dtype)


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
