"""3D rotary position embedding (RoPE) from per-token (t, h, w) positions, laid out as a model lays it out.

A model's RoPE is defined by how its head dimension is split between the t, h and w axes, θ, and which
channels form the rotated pairs:
- Wan (ComfyUI ``WanModel.rope_embedder``, ``comfy/ldm/flux/math.py`` ``rope``/``apply_rope1``): axes
  ``[d − 4·(d//6), 2·(d//6), 2·(d//6)]`` (128 → 44/42/42, 64 → 24/20/20), θ = 10000, pair j rotates channels
  (2j, 2j+1) ("adjacent"), pairs ordered t, h, w; within an axis of width n pair i turns by
  ``pos · θ^(−2i/n)``.
- MfM (docs/design.md §8; core/mfm/rope.py): 1/4 : 3/8 : 3/8 (64 → 16/24/24), θ = 10000.
  ``pairing="half"`` (channel j with j + d/2, the rotate-half layout) is also supported for other models.

``positions_from_freqs`` reads the positions back out of a ComfyUI frequency tensor (so the fused kernels serve
whatever produced it: the plain grid, UniMMVSR's reference ranges from t = 20 and 30, ``rope_options`` shifts)
and checks that they reproduce it. No ComfyUI import here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PAIRINGS = ("adjacent", "half")


@dataclass(frozen=True)
class RopeSpec:
    axes_dim: tuple[int, int, int]   # channels of the head dim given to t, h, w (each even)
    theta: float = 10000.0
    pairing: str = "adjacent"

    def __post_init__(self):
        if len(self.axes_dim) != 3 or any(a <= 0 or a % 2 for a in self.axes_dim):
            raise ValueError(f"RoPE axes must be three positive even widths, got {self.axes_dim}")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"RoPE pairing must be one of {PAIRINGS}, got {self.pairing!r}")

    @property
    def head_dim(self) -> int:
        return sum(self.axes_dim)


def wan_rope_spec(head_dim: int, theta: float = 10000.0) -> RopeSpec:
    d = head_dim
    return RopeSpec((d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)), theta, "adjacent")


def pair_frequencies(spec: RopeSpec, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per rotated pair (d/2 of them, in order): its angular frequency (float64) and its axis (0 t, 1 h, 2 w).
    Frequencies as ComfyUI computes them: ``1 / θ^linspace(0, (n−2)/n, n/2)`` in float64."""
    freqs, axes = [], []
    for axis, n in enumerate(spec.axes_dim):
        scale = torch.linspace(0, (n - 2) / n, steps=n // 2, dtype=torch.float64)
        freqs.append(1.0 / (spec.theta ** scale))
        axes.append(torch.full((n // 2,), axis, dtype=torch.int32))
    return torch.cat(freqs).to(device), torch.cat(axes).to(device)


def split_frequencies(inv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 frequencies → (hi, lo) float32 with hi + lo within 2^-35 of inv and hi keeping 12 significant bits, so
    that position·hi is exact in float32 for grid positions below 4096 (the Triton kernel's angle reduction)."""
    hi = inv.float()
    hi = (hi.view(torch.int32) & ~0xFFF).view(torch.float32)   # the low 12 of 23 mantissa bits cleared
    return hi, (inv - hi.double()).float()


def rope_angles(positions: torch.Tensor, spec: RopeSpec) -> torch.Tensor:
    """[L, d/2] float64 angles of L tokens at ``positions`` [L, 3] (float32 positions × float64 frequencies, as
    ComfyUI's ``rope``)."""
    inv, axes = pair_frequencies(spec, positions.device)
    return positions.float().double()[:, axes.long()] * inv


def rope_factors(positions: torch.Tensor, spec: RopeSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c, s [L, d] float32, partner [d]) such that the rotated x is ``x·c + x[..., partner]·s``: cos/sin of
    float64 angles stored as float32 (ComfyUI's ``rope``), laid out by the spec's pairing."""
    ang = rope_angles(positions, spec)
    cos, sin = torch.cos(ang).float(), torch.sin(ang).float()          # [L, d/2]
    d = spec.head_dim
    channels = torch.arange(d, device=positions.device)
    if spec.pairing == "adjacent":   # channel 2j pairs with 2j+1
        c = cos.repeat_interleave(2, dim=-1)
        s = torch.stack((-sin, sin), dim=-1).flatten(-2)
        partner = channels ^ 1
    else:                            # channel j pairs with j + d/2
        c = torch.cat((cos, cos), dim=-1)
        s = torch.cat((-sin, sin), dim=-1)
        partner = (channels + d // 2) % d
    return c, s, partner


def rotate(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor, partner: torch.Tensor,
           heads_first: bool = False) -> torch.Tensor:
    """``x`` [B, L, H, d] ([B, H, L, d] with ``heads_first``) rotated by ``rope_factors``, in float32, returned
    in float32: first of a pair c·x1 − s·x2, second s·x1 + c·x2 — one elementwise 4-D expression (it compiles into
    a single loop, and Inductor's FlexAttention lowering takes its output)."""
    xf = x.float()
    c, s = (c[None, None], s[None, None]) if heads_first else (c[None, :, None], s[None, :, None])
    return xf * c + xf[..., partner] * s


def apply_rope(x: torch.Tensor, positions: torch.Tensor, spec: RopeSpec, heads_first: bool = False) -> torch.Tensor:
    """``x`` [B, L, H, d] ([B, H, L, d] with ``heads_first``) rotated by ``positions`` [L, 3] in float32, the
    result in x's dtype (ComfyUI's ``rope`` + ``apply_rope1``). The Triton kernel computes the angles in float32
    on the fly instead (≤ ~3e-6 apart at t ≈ 30)."""
    return rotate(x, *rope_factors(positions, spec), heads_first=heads_first).to(x.dtype)


def positions_from_freqs(freqs: torch.Tensor, spec: RopeSpec, tolerance: float = 5e-5) -> torch.Tensor | None:
    """The per-token (t, h, w) positions [L, 3] (float32; integers stay exact) that produced a ComfyUI Wan
    frequency tensor ``freqs`` [1, L, 1, d/2, 2, 2] (rows ``[[cos, −sin], [sin, cos]]``), or None when it has
    another shape, is not a rotation table of ``spec``, or the positions do not reproduce it within ``tolerance``.

    Each axis is unwrapped from its slowest pair (unambiguous while |position| < π·θ^((n−2)/n), ~20,000 for Wan)
    up to its fastest (frequency 1: full float precision)."""
    half = spec.head_dim // 2
    if freqs.ndim != 6 or tuple(freqs.shape[-3:]) != (half, 2, 2) or freqs.shape[2] != 1:
        return None
    table = freqs.detach()
    if table.shape[0] > 1 and not bool((table == table[:1]).all()):
        return None
    table = table[0, :, 0].double()                       # [L, d/2, 2, 2]
    cos, sin = table[..., 0, 0], table[..., 1, 0]
    if not (torch.equal(table[..., 1, 1], table[..., 0, 0]) and torch.equal(table[..., 0, 1], -table[..., 1, 0])):
        return None
    angle = torch.atan2(sin, cos)
    inv, axes = pair_frequencies(spec, table.device)
    positions = []
    start = 0
    for n in spec.axes_dim:
        pairs = range(start, start + n // 2)
        est = angle[:, pairs[-1]] / inv[pairs[-1]]
        for j in reversed(pairs[:-1]):
            turns = torch.round((est * inv[j] - angle[:, j]) / (2 * math.pi))
            est = (angle[:, j] + 2 * math.pi * turns) / inv[j]
        positions.append(est)
        start += n // 2
    pos = torch.stack(positions, dim=-1)
    nearest = torch.round(pos)
    pos = torch.where((pos - nearest).abs() < 1e-3, nearest, pos)
    rebuilt = pos[:, axes.long()] * inv
    err = torch.maximum((torch.cos(rebuilt) - cos).abs().max(), (torch.sin(rebuilt) - sin).abs().max())
    if not bool(torch.isfinite(err)) or float(err) > tolerance:
        return None
    return pos.float()
