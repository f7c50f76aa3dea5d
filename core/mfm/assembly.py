"""The official script's output assembly (MfM inference; docs/mfm.md "Output assembly"): what it does to the decoded
frames before saving them.

- video extension: the source frames before the ``clip_frames`` it conditioned on come first, stretched to the
  canvas; clip transition: also clip B's frames after its first ``clip_frames`` at the end (the conditioned frames
  themselves are the generated ones);
- image super-resolution: the output resized (nearest) to 4× the input image; image colorization: back to the input
  image's size (nearest);
- an assembled video whose frame count is a multiple of 4 loses its first 3 frames (the official save rule).
Other tasks are returned unchanged. Frames are ComfyUI IMAGE [F, H, W, 3] in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import fitting


def assemble(condition, frames: torch.Tensor) -> torch.Tensor:
    key, extras = condition.task.key, condition.extras
    if key in ("vext", "flc2v"):
        n, (h, w) = extras["clip_frames"], frames.shape[1:3]
        parts = []
        video = extras["video"]
        if video is not None and video.shape[0] > n:
            parts.append(fitting.resize(video[:-n], w, h))
        parts.append(frames.float())
        video_b = extras.get("video_b")
        if key == "flc2v" and video_b is not None and video_b.shape[0] > n:
            parts.append(fitting.resize(video_b[n:], w, h))
        out = torch.cat(parts)
        return out[3:] if out.shape[0] % 4 == 0 else out
    if key in ("isr", "icolor") and extras.get("image_size"):
        ih, iw = extras["image_size"]
        size = (4 * ih, 4 * iw) if key == "isr" else (ih, iw)
        return F.interpolate(frames.movedim(-1, 1).float(), size=size, mode="nearest").movedim(1, -1)
    return frames
