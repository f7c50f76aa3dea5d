"""Seeded mask generators following the paper's data recipes (MfM §4.1, Appendix A). Keep masks: 1 = known.

- interior (inpainting): one rectangle covering a fraction of the pixels drawn uniformly from [1/9, 1/4], with
  a random aspect (each side between half and twice the square side), at a random position.
- border (outpainting): a non-empty random subset of the four sides, each strip a fraction drawn uniformly from
  [1/8, 1/4] of the width (left/right) or height (top/bottom).
The same mask holds for every frame of a video (a static region, as in the benchmark).
"""
from __future__ import annotations

import math

import torch

INTERIOR_AREA = (1 / 9, 1 / 4)
BORDER_FRACTION = (1 / 8, 1 / 4)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def interior_mask(height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    area = _uniform(g, *INTERIOR_AREA) * height * width
    side = math.sqrt(area)
    aspect = math.exp(_uniform(g, math.log(0.5), math.log(2.0)))
    h = max(1, min(height, round(side * math.sqrt(aspect))))
    w = max(1, min(width, round(area / h)))
    top = int(torch.randint(0, height - h + 1, (), generator=g))
    left = int(torch.randint(0, width - w + 1, (), generator=g))
    keep = torch.ones(height, width)
    keep[top:top + h, left:left + w] = 0.0
    return keep


def border_mask(height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    sides = []
    while not sides:
        sides = [s for s in ("left", "right", "top", "bottom") if float(torch.rand((), generator=g)) < 0.5]
    keep = torch.ones(height, width)
    for side in sides:
        f = _uniform(g, *BORDER_FRACTION)
        n = max(1, round(f * (width if side in ("left", "right") else height)))
        if side == "left":
            keep[:, :n] = 0.0
        elif side == "right":
            keep[:, width - n:] = 0.0
        elif side == "top":
            keep[:n] = 0.0
        else:
            keep[height - n:] = 0.0
    return keep
