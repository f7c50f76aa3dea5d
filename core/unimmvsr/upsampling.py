"""The Upsampler's pixel step (UniMMVSR §3.2 "LR video by channel concatenation"): the LR video is upscaled
bilinearly in PIXEL space before VAE encoding — latents are never interpolated. Shared by the node and the trainer.
"""
from __future__ import annotations

import torch


def upscale_frames(frames: torch.Tensor, width: int, height: int, chunk: int = 8) -> torch.Tensor:
    """[T, h, w, 3] in [0, 1] → [T, height, width, 3], bilinear (half-pixel centres), a few frames at a time so
    the peak memory is bounded by ``chunk`` output frames."""
    out = torch.empty(frames.shape[0], height, width, 3, dtype=torch.float32)
    for i in range(0, frames.shape[0], chunk):
        x = frames[i:i + chunk, ..., :3].movedim(-1, 1).float()
        out[i:i + chunk] = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear",
                                                           align_corners=False).clamp(0, 1).movedim(1, -1)
    return out
