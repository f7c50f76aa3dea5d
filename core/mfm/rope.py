"""MfM's 3D rotary position embedding (official ``embeddings.py``; docs/design.md §8).

Per head the dimension splits into t : h : w = Dh/4 : 3·Dh/8 : 3·Dh/8 (64 → 16/24/24). Each axis of width d has
frequencies 1/θ^(2i/d), i < d/2, θ = 10000, and integer grid positions 0…n−1 (no interpolation); cos and sin are
repeated per pair and the axes concatenated in t, h, w order. Pairs are *interleaved*: (2i, 2i+1) rotate together,
rot(x) = (−x₁, x₀, −x₃, x₂, …) — the pairing of Wan too (ComfyUI's ``apply_rope1``, core/attention/rope3d.py
"adjacent"); the two differ in how the head dimension is split between the axes (Wan: d − 4·(d//6), 2·(d//6),
2·(d//6)). This is the pack's one MfM RoPE.
"""
from __future__ import annotations

import torch

THETA = 10000.0


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) widths of the head dimension."""
    t, hw = head_dim // 4, (head_dim // 8) * 3
    if t + 2 * hw != head_dim or t % 2 or hw % 2:
        raise ValueError(f"MfM's RoPE needs a head dimension divisible by 16, got {head_dim}")
    return t, hw, hw


def rope_tables(grid: tuple[int, int, int], head_dim: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [T·h·w, head_dim] (fp32) for tokens in t-major, row, column order."""
    tables_cos, tables_sin = [], []
    n_t, n_h, n_w = grid
    pos = torch.stack(torch.meshgrid(torch.arange(n_t, device=device), torch.arange(n_h, device=device),
                                     torch.arange(n_w, device=device), indexing="ij"), dim=-1).reshape(-1, 3)
    for axis, d in enumerate(axis_dims(head_dim)):
        freqs = 1.0 / THETA ** (torch.arange(0, d, 2, device=device, dtype=torch.float64) / d)
        angle = pos[:, axis, None].double() * freqs[None]
        tables_cos.append(angle.cos().float().repeat_interleave(2, dim=-1))
        tables_sin.append(angle.sin().float().repeat_interleave(2, dim=-1))
    return torch.cat(tables_cos, dim=-1), torch.cat(tables_sin, dim=-1)


def rotations(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The tables (fp32 or fp64) as one complex rotation per pair, [S, Dh/2]: e^{iθ} = cos θ + i·sin θ."""
    return torch.complex(cos[:, 0::2], sin[:, 0::2])


def rotate(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """``x`` [..., Dh] with each interleaved pair (x₀, x₁) read as x₀ + i·x₁ and multiplied by its rotation
    (broadcast against [..., Dh/2]; [S, Dh/2] for x [B, H, S, Dh]) — (x₀cos − x₁sin, x₁cos + x₀sin), the official
    x·cos + rot(x)·sin in one complex product — in the rotation's precision (fp32, or fp64), back to x's dtype."""
    real = torch.float64 if rotation.dtype == torch.complex128 else torch.float32
    x_real = x.to(real)
    if not x_real.is_contiguous():   # view_as_complex needs unit last stride, even other strides and offset
        x_real = x_real.contiguous()
    pairs = torch.view_as_complex(x_real.unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, S, Dh] by the tables [S, Dh] (interleaved pairs), in fp32, back to x's dtype."""
    return rotate(x, rotations(cos, sin))
