"""Latent → RGB preview factors fitted to an autoencoder (for latent spaces ComfyUI ships no factors for, such as
MfM's CogVideoX-class VAE). ComfyUI's Latent2RGB preview is a per-pixel linear map ``rgb = z·F + b`` from model-space
latent channels to RGB in [−1, 1]; here F and b are the least-squares fit of that map on probe images encoded by the
model's own encoder (RGB averaged over each latent cell), so the previews show the colours this VAE stores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PROBE_COUNT = 8
PROBE_SIZE = 64


def probe_images(count: int = PROBE_COUNT, size: int = PROBE_SIZE, seed: int = 0) -> torch.Tensor:
    """[count, size, size, 3] in [0, 1]: smooth random colour fields (a 3×3 grid of random colours, bilinearly
    interpolated), so every colour and gentle gradients are represented and no cell is dominated by edges."""
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 3, 3, 3, generator=g)
    fields = F.interpolate(corners, size=(size, size), mode="bilinear", align_corners=True)
    return fields.movedim(1, -1).contiguous()


def fit_latent_rgb(latents: torch.Tensor, images: torch.Tensor) -> tuple[list[list[float]], list[float], float]:
    """Least-squares ``rgb ≈ z·F + b``.

    latents: [N, C, h, w] model-space latents of the images; images: [N, H, W, 3] in [0, 1] with H, W multiples of
    h, w. Returns (F as C rows of 3 — ComfyUI's ``latent_rgb_factors`` layout —, b, R² of the fit)."""
    n, channels, h, w = latents.shape
    if images.shape[0] != n or images.shape[1] % h or images.shape[2] % w:
        raise ValueError(f"images {tuple(images.shape)} do not tile onto latents {tuple(latents.shape)}")
    target = F.adaptive_avg_pool2d(images.movedim(-1, 1).double(), (h, w)) * 2 - 1          # [N, 3, h, w] in [−1, 1]
    x = latents.double().movedim(1, -1).reshape(-1, channels)
    y = target.movedim(1, -1).reshape(-1, 3)
    design = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution                                      # [C + 1, 3]
    residual = ((design @ solution - y) ** 2).sum()
    total = ((y - y.mean(0)) ** 2).sum()
    r2 = float(1 - residual / total) if total > 0 else 0.0
    return solution[:channels].tolist(), solution[channels].tolist(), r2
