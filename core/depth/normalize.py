"""Depth normalisation modes for a sequence of frames [T, H, W] (Depth Anything predicts relative inverse depth:
larger = nearer).

- ``raw``: as predicted, unnormalised (what MfM was trained on). Inverted, it is mirrored within the sequence's
  range (min + max − d), so the values keep their scale.
- ``per frame``: each frame min-max scaled to [0, 1] on its own (the scale jumps between frames: flicker).
- ``per sequence``: one min and max over all frames, so every frame shares one scale (no flicker).
Inverted normalised depth is 1 − d. A constant frame (or sequence) normalises to 0.
"""
from __future__ import annotations

import torch

NORMALIZATIONS = ("raw", "per frame", "per sequence")


def _minmax_(depth: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    span = hi - lo
    return depth.sub_(lo).div_(torch.where(span > 0, span, torch.ones_like(span)))


def normalize_depth(depth: torch.Tensor, mode: str, invert: bool = False, inplace: bool = False) -> torch.Tensor:
    """Float32 depth [T, H, W] in the chosen mode: a new tensor, or ``depth`` itself changed when ``inplace``
    (for float32 input; saves a copy of a long video's depth)."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization {mode!r} is not one of {', '.join(NORMALIZATIONS)}")
    if depth.ndim != 3 or depth.numel() == 0:
        raise ValueError(f"depth must be a non-empty [T, H, W] tensor, got shape {tuple(depth.shape)}")
    out = depth.float() if inplace else depth.float().clone()
    if mode == "per frame":
        _minmax_(out, out.amin(dim=(1, 2), keepdim=True), out.amax(dim=(1, 2), keepdim=True))
    elif mode == "per sequence":
        _minmax_(out, out.min(), out.max())
    if invert:
        mirror = (out.min() + out.max()) if mode == "raw" else 1.0
        out.neg_().add_(mirror)
    return out


def preview_image(depth: torch.Tensor, mode: str) -> torch.Tensor:
    """Depth [T, H, W] in ``mode`` → IMAGE [T, H, W, 3] in [0, 1], grey. Normalised depth is shown as it is (the
    image is a view of ``depth``: no copy); raw depth gets one min-max over the whole sequence."""
    grey = _minmax_(depth.float().clone(), depth.min(), depth.max()) if mode == "raw" else depth
    return grey.unsqueeze(-1).expand(*grey.shape, 3)
