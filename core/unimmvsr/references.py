"""Visual references for UniMMVSR (§3.2 "Visual references via token concatenation"; SPEC §1).

ID images and reference videos are zero-padded in PIXEL space to the target (window) size before VAE encoding.
A reference of another aspect ratio is first scaled to fit inside the target keeping its ratio (never up), then
centred on a black canvas. Reference videos keep their first (n − 1)//4·4 + 1 frames (whole latent frames).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .reference_layout import ID_IMAGE, REFERENCE_VIDEO


@dataclass
class Reference:
    category: str                 # ID_IMAGE or REFERENCE_VIDEO
    latent: torch.Tensor          # [1, C, k, h, w] (VAE latent space)


def pad_to(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[T, H, W, 3] in [0, 1] → [T, height, width, 3]: scaled down to fit if needed, centred, zero padding."""
    t, h, w, c = frames.shape
    scale = min(1.0, width / w, height / h)
    if scale < 1.0:
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        frames = F.interpolate(frames.movedim(-1, 1).float(), size=(nh, nw), mode="bicubic", align_corners=False,
                               antialias=True).clamp(0, 1).movedim(1, -1)
        h, w = nh, nw
    out = torch.zeros(t, height, width, c, dtype=frames.dtype)
    top, left = (height - h) // 2, (width - w) // 2
    out[:, top:top + h, left:left + w] = frames
    return out


def usable_video_frames(n: int) -> int:
    if n < 1:
        raise ValueError("a reference video needs at least one frame")
    return (n - 1) // 4 * 4 + 1


__all__ = ["Reference", "pad_to", "usable_video_frames", "ID_IMAGE", "REFERENCE_VIDEO"]
