"""Tiled denoising for 4K (docs/design.md §4): spatial latent tiles with overlap, temporal chunks with overlap,
blended with feathered weights at every step so no seam appears, and memory bounded by the tile.

Tiles are placed with a stride of ``tile − overlap`` and the last one aligned to the far edge, so every tile has
the same size (one set of reference tokens fits all). Each tile's weight ramps linearly from a small floor at a
border it shares with a neighbour up to 1 over the overlap; borders on the frame edge are not feathered. The
blend is Σ w·x / Σ w, exact where only one tile covers a position.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FLOOR = 1e-3  # weight at a shared border (never exactly 0: every position keeps a defined blend)


@dataclass(frozen=True)
class Window:
    t0: int
    t1: int
    y0: int
    y1: int
    x0: int
    x1: int

    def slices(self):
        return (slice(self.t0, self.t1), slice(self.y0, self.y1), slice(self.x0, self.x1))


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` (≤ length) covering [0, length) with at least ``overlap``."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be ≥ 0 and smaller than the tile {tile}")
    stride = tile - overlap
    out = list(range(0, length - tile, stride))
    out.append(length - tile)
    return out


def windows(frames: int, height: int, width: int, tile_frames: int, tile_h: int, tile_w: int,
            overlap_frames: int, overlap_h: int, overlap_w: int) -> list[Window]:
    out = []
    for t in starts(frames, tile_frames, overlap_frames):
        for y in starts(height, tile_h, overlap_h):
            for x in starts(width, tile_w, overlap_w):
                out.append(Window(t, min(frames, t + tile_frames), y, min(height, y + tile_h),
                                  x, min(width, x + tile_w)))
    return out


def _ramp(length: int, start: int, end: int, full: int, overlap: int) -> torch.Tensor:
    """1-D weights of a tile [start, end) inside [0, full): ramps at interior borders over ``overlap``."""
    w = torch.ones(end - start)
    n = min(overlap, end - start)
    if n > 0:
        ramp = torch.linspace(FLOOR, 1.0, n + 2)[1:-1]
        if start > 0:
            w[:n] = torch.minimum(w[:n], ramp)
        if end < full:
            w[-n:] = torch.minimum(w[-n:], ramp.flip(0))
    return w


def weights(window: Window, frames: int, height: int, width: int, overlap_frames: int, overlap_h: int,
            overlap_w: int) -> torch.Tensor:
    """[t, h, w] feather weights of one window."""
    wt = _ramp(frames, window.t0, window.t1, frames, overlap_frames)
    wy = _ramp(height, window.y0, window.y1, height, overlap_h)
    wx = _ramp(width, window.x0, window.x1, width, overlap_w)
    return wt[:, None, None] * wy[None, :, None] * wx[None, None, :]


class Blender:
    """Accumulates Σ w·x and Σ w over windows of a [B, C, T, H, W] tensor."""

    def __init__(self, shape, dtype=torch.float32, device="cpu"):
        self.total = torch.zeros(shape, dtype=dtype, device=device)
        self.weight = torch.zeros(shape[2:], dtype=dtype, device=device)

    def add(self, window: Window, value: torch.Tensor, w: torch.Tensor) -> None:
        t, y, x = window.slices()
        w = w.to(self.total)
        self.total[:, :, t, y, x] += value.to(self.total) * w
        self.weight[t, y, x] += w

    def result(self) -> torch.Tensor:
        if torch.any(self.weight <= 0):
            raise RuntimeError("some positions were covered by no tile")
        return self.total / self.weight
