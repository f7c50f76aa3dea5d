"""IMAGE frames (float [H, W, 3] in 0–1) as the pictures a vision-language model is sent."""
from __future__ import annotations

import base64
import io

import torch


def to_pil(frame: torch.Tensor, max_side: int):
    """An RGB PIL image, downscaled (never upscaled) so its longest side is at most ``max_side``."""
    from PIL import Image

    if frame.ndim != 3 or frame.shape[-1] not in (3, 4):
        raise ValueError(f"expected a frame [height, width, 3], got shape {tuple(frame.shape)}")
    array = (frame[..., :3].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    image = Image.fromarray(array, "RGB")
    longest = max(image.size)
    if longest > max_side:
        scale = max_side / longest
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    return image


def to_data_url(frame: torch.Tensor, max_side: int, quality: int = 90) -> str:
    """A JPEG data URL, as OpenAI-compatible endpoints take images."""
    buffer = io.BytesIO()
    to_pil(frame, max_side).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
