"""Fused attention with 3D RoPE applied from positions and per-group logit scales: one entry point, two backends.

    out = softmax(T[g_q(i), g_k(j)] · (R(p_i)·q_i)·(R(p_j)·k_j) / √d) · v

- ``T`` is a small table indexed by (query group, key group): TMA's α on text keys, TACA's γ on image-query ×
  text-key logits only, 1 elsewhere. Default: one group each side, T = [[1]].
- ``R(p)`` is the rotation of ``rope`` (core.attention.rope3d) at per-token (t, h, w) positions; None: no RoPE
  (cross-attention).

Backends: ``"triton"`` (core.attention.triton_rope_flash: RoPE while loading q and k, never writing the rotated
tensors; CUDA, or Triton's CPU interpreter with TRITON_INTERPRET=1) and ``"flex"`` (core.attention.flex_rope:
PyTorch FlexAttention, compiled; RoPE applied before, the table read by ``score_mod``; any device). Both are
forward-only (inference). Tensors are [B, L, H, d]; head dims 64 and 128; float32, float16, bfloat16.
Triton and FlexAttention are imported only when a backend is first used.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from .rope3d import RopeSpec

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BACKENDS = ("triton", "flex")


class KernelUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class GroupTable:
    """Logit multipliers by (query group, key group): ``table`` [Gq, Gk]; ``q_groups`` [Lq], ``k_groups`` [Lk]
    int32 group ids (None: every token in group 0)."""
    table: torch.Tensor
    q_groups: torch.Tensor | None = None
    k_groups: torch.Tensor | None = None

    @staticmethod
    def uniform(scale: float = 1.0) -> "GroupTable":
        return GroupTable(torch.tensor([[float(scale)]]))

    @staticmethod
    def joint(n_first: int, n_total: int, first_to_rest: float = 1.0, rest_to_first: float = 1.0) -> "GroupTable":
        """Joint attention over one sequence: tokens [0, n_first) are group 0 (e.g. text), the rest group 1 (e.g.
        image). ``rest_to_first`` multiplies rest-query × first-key logits (TACA's γ with text first)."""
        groups = torch.zeros(n_total, dtype=torch.int32)
        groups[n_first:] = 1
        table = torch.tensor([[1.0, float(first_to_rest)], [float(rest_to_first), 1.0]])
        return GroupTable(table, groups, groups)

    def dense(self, lq: int, lk: int) -> torch.Tensor:
        """[Lq, Lk] multipliers (tests, references)."""
        qg = self.q_groups.long() if self.q_groups is not None else torch.zeros(lq, dtype=torch.long)
        kg = self.k_groups.long() if self.k_groups is not None else torch.zeros(lk, dtype=torch.long)
        return self.table.float()[qg.cpu()][:, kg.cpu()]


_cache_lock = threading.Lock()
_zero_groups: dict[tuple, torch.Tensor] = {}


def _groups(groups: torch.Tensor | None, length: int, device, n_groups: int, side: str) -> torch.Tensor:
    if groups is not None:
        if groups.shape != (length,):
            raise ValueError(f"{side} group ids have shape {tuple(groups.shape)} for {length} tokens")
        lowest, highest = (int(groups.min()), int(groups.max())) if length else (0, 0)
        if lowest < 0 or highest >= n_groups:   # the Triton kernel reads the table unchecked
            raise ValueError(f"{side} group ids run from {lowest} to {highest}; the logit-scale table has {n_groups} "
                             f"{side} groups")
        return groups.to(device=device, dtype=torch.int32)
    key = (length, str(device))
    with _cache_lock:
        if key not in _zero_groups:
            if len(_zero_groups) > 64:
                _zero_groups.clear()
            _zero_groups[key] = torch.zeros(length, dtype=torch.int32, device=device)
        return _zero_groups[key]


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError("q, k, v must be [B, L, H, d]")
    if q.shape[0] != k.shape[0] or k.shape[:3] != v.shape[:3] or q.shape[2] != k.shape[2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"incompatible q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS or v.shape[-1] != q.shape[-1]:
        raise ValueError(f"head dim {q.shape[-1]} is not supported by the fused kernels (supported: "
                         f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))})")
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"dtype {q.dtype} is not supported by the fused kernels (float32, float16, bfloat16, "
                         f"the same for q, k, v)")


def rope_attention(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   q_positions: torch.Tensor | None = None, k_positions: torch.Tensor | None = None,
                   rope: RopeSpec | None = None, groups: GroupTable | None = None, sm_scale: float | None = None,
                   **options) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Lq, H, d] in q's dtype, log-sum-exp [B, H, Lq] float32 of the scaled logits — None from compiled
    FlexAttention on a CPU, which cannot return it)."""
    check_inputs(q, k, v)
    if rope is not None:
        if rope.head_dim != q.shape[-1]:
            raise ValueError(f"RoPE axes {rope.axes_dim} cover {rope.head_dim} channels, the head dim is {q.shape[-1]}")
        if q_positions is None or k_positions is None:
            raise ValueError("RoPE needs q_positions and k_positions")
        if q_positions.shape != (q.shape[1], 3) or k_positions.shape != (k.shape[1], 3):
            raise ValueError("positions must be [L, 3] (t, h, w) per token")
    groups = groups or GroupTable.uniform()
    if groups.table.ndim != 2:
        raise ValueError(f"the logit-scale table must be [query groups, key groups], got {tuple(groups.table.shape)}")
    qg = _groups(groups.q_groups, q.shape[1], q.device, groups.table.shape[0], "query")
    kg = _groups(groups.k_groups, k.shape[1], q.device, groups.table.shape[1], "key")
    table = groups.table.to(device=q.device, dtype=torch.float32).contiguous()
    scale = float(sm_scale) if sm_scale is not None else q.shape[-1] ** -0.5
    if backend == "triton":
        from .triton_rope_flash import triton_rope_attention
        return triton_rope_attention(q, k, v, q_positions, k_positions, rope, qg, kg, table, scale, **options)
    if backend == "flex":
        from .flex_rope import flex_rope_attention
        return flex_rope_attention(q, k, v, q_positions, k_positions, rope, qg, kg, table, scale, **options)
    raise ValueError(f"unknown fused attention backend {backend!r} (one of {', '.join(BACKENDS)})")
