"""The fused-attention semantics (core.attention.fused) through PyTorch FlexAttention, compiled.

RoPE is applied first (core.attention.rope3d.apply_rope, in float32, cast back like ComfyUI's apply_rope1);
``score_mod`` multiplies each scaled logit by ``table[g_q[q_idx], g_k[kv_idx]]``. The whole function is one
``torch.compile`` region, so on a CPU Inductor emits a C++ kernel for the attention and fuses the RoPE arithmetic
(static shapes: one compile per kind and shape of call, ~10–20 s each on 2 cores; Inductor's CPU FlexAttention
with dynamic sizes fails to build in torch 2.14, so sizes stay static). The path for CPUs and
for GPUs the Triton kernel does not serve. FlexAttention has no CPU backward: inference only; compiled on a CPU it cannot return the
log-sum-exp either (None then; the eager path returns it).
Imported lazily (FlexAttention and Inductor are heavy imports).
"""
from __future__ import annotations

import threading

import torch
from torch.nn.attention.flex_attention import AuxRequest, flex_attention

from .rope3d import RopeSpec, apply_rope


def _attention(q, k, v, q_positions, k_positions, q_groups, k_groups, table, sm_scale: float,
               rope: RopeSpec | None, want_lse: bool):
    # q, k, v arrive as [B, H, L, d] contiguous (see flex_rope_attention)
    if rope is not None:
        q = apply_rope(q, q_positions, rope, heads_first=True)
        k = apply_rope(k, k_positions, rope, heads_first=True)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score * table[q_groups[q_idx], k_groups[kv_idx]]

    if not want_lse:
        out = flex_attention(q, k, v, score_mod=score_mod, scale=sm_scale)
        return out.transpose(1, 2), None
    out, aux = flex_attention(q, k, v, score_mod=score_mod, scale=sm_scale, return_aux=AuxRequest(lse=True))
    return out.transpose(1, 2), aux.lse


_lock = threading.Lock()
_compiled = None


def compiled_attention():
    global _compiled
    with _lock:
        if _compiled is None:
            _compiled = torch.compile(_attention, fullgraph=True, dynamic=False)
        return _compiled


def flex_rope_attention(q, k, v, q_positions, k_positions, rope: RopeSpec | None, q_groups, k_groups, table,
                        sm_scale: float, compiled: bool = True):
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("the FlexAttention path is inference only (no CPU backward): run it under torch.no_grad()")
    fn = compiled_attention() if compiled else _attention
    if rope is None:
        q_positions = k_positions = None
    want_lse = not (compiled and q.device.type == "cpu")  # Inductor's CPU FlexAttention cannot return it (2.14)
    # [B, H, L, d] contiguous before the compiled region: on the transposed views of [B, L, H, d] tensors
    # Inductor's CPU FlexAttention kernel runs ~1.45× slower (measured, 1,536 tokens × 12 heads)
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    out, lse = fn(q, k, v, q_positions, k_positions, q_groups, k_groups, table, sm_scale, rope, want_lse)
    return out.contiguous(), (lse.float() if lse is not None else None)
