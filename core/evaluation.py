"""Image-quality metrics and their statistics for evaluations (the trained UniMMVSR demo, trainer validation).

- PSNR over all pixels of a [T, H, W, 3] video in [0, 1] (data range 1).
- SSIM: per frame and channel, an 11×11 Gaussian window (σ = 1.5), C1 = (0.01)², C2 = (0.03)², population
  statistics, averaged over the valid region (no padding) — the definition of Wang et al. 2004 as scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)`` computes it.
- A 95% percentile-bootstrap interval of a mean over items (crops), and the win rate of one row over another.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of two [T, H, W, C] videos in [0, 1] (kornia's SSIM map, valid region only)."""
    import kornia.metrics
    x, y = a.double().movedim(-1, 1), b.double().movedim(-1, 1)
    return float(kornia.metrics.ssim(x, y, 11, max_val=1.0, padding="valid").mean())


def bootstrap_interval(values, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (items resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def win_rate(row, above) -> float:
    """Fraction of items on which ``row`` scores higher than ``above`` (ties count half)."""
    r, a = np.asarray(row, dtype=np.float64), np.asarray(above, dtype=np.float64)
    return float(np.mean((r > a) + 0.5 * (r == a)))
