"""Visual references for UniMMVSR (§3.2 "Visual references via token concatenation"; docs/design.md §2).

ID images and reference videos are zero-padded in PIXEL space to the target (window) size before VAE encoding.
A reference of another aspect ratio is first scaled to fit inside the target keeping its ratio (never up), then
centred on the padding canvas. Reference videos keep their first (n − 1)//t·t + 1 frames (whole latent frames,
t = the VAE's temporal compression, 4 for Wan).

Padding colour: mid-grey. The paper pads "with zeros in the pixel space before VAE encoding"; the pixels a video
VAE encodes are normalised to [−1, 1] (Wan's VAE included: ComfyUI maps IMAGE x ∈ [0, 1] to 2x − 1), so a zero
there is 0.5 in ComfyUI's IMAGE range — mid-grey, not black. It is also the neutral value of the space: black
would be a strong dark border the model could mistake for content, and it matches the grey that core Wan VACE
uses for unknown pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .reference_layout import ID_IMAGE, REFERENCE_VIDEO


PAD_VALUE = 0.5  # IMAGE value whose VAE input (2x − 1) is zero


@dataclass
class Reference:
    category: str                 # ID_IMAGE or REFERENCE_VIDEO
    latent: torch.Tensor          # [1, C, k, h, w] (VAE latent space)


def pad_to(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[T, H, W, 3] in [0, 1] → [T, height, width, 3]: scaled down to fit if needed, centred, padded with
    PAD_VALUE (0 in the VAE's [−1, 1] input)."""
    t, h, w, c = frames.shape
    scale = min(1.0, width / w, height / h)
    if scale < 1.0:
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        frames = F.interpolate(frames.movedim(-1, 1).float(), size=(nh, nw), mode="bicubic", align_corners=False,
                               antialias=True).clamp(0, 1).movedim(1, -1)
        h, w = nh, nw
    out = torch.full((t, height, width, c), PAD_VALUE, dtype=frames.dtype)
    top, left = (height - h) // 2, (width - w) // 2
    out[:, top:top + h, left:left + w] = frames
    return out


def usable_video_frames(n: int, temporal_factor: int = 4) -> int:
    if n < 1:
        raise ValueError("a reference video needs at least one frame")
    return (n - 1) // temporal_factor * temporal_factor + 1


__all__ = ["Reference", "pad_to", "usable_video_frames", "ID_IMAGE", "REFERENCE_VIDEO"]
