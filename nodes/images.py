"""IMAGE inputs, one rule for every node of the pack: RGBA frames (e.g. from Join Image with Alpha) lose their alpha
channel, with a log line; other channel counts are refused."""
from __future__ import annotations

import logging

import torch


def rgb_frames(images: torch.Tensor | None, name: str, node: str) -> torch.Tensor | None:
    """IMAGE [..., C] → [..., 3]: RGB passes unchanged, RGBA's alpha is dropped (logged once per call, naming
    ``node`` and the input ``name``), any other channel count raises ValueError naming the input. None (an
    unconnected optional input), what is not a [B, H, W, C] tensor and empty batches (core makes [0, 3, 0, 0] of
    a video without frames) pass unchanged: the node's own checks name those."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.numel() == 0:
        return images
    channels = images.shape[-1]
    if channels == 3:
        return images
    if channels == 4:
        logging.warning("UniCascade: %s: %s is RGBA; its alpha channel is dropped (only RGB is used)", node, name)
        return images[..., :3]
    raise ValueError(f"{name}: frames have {channels} channels; RGB (3) or RGBA (4) images are needed")
