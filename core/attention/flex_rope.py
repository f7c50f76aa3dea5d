"""The fused-attention semantics (core.attention.fused) through PyTorch FlexAttention, compiled.

RoPE is applied first (core.attention.rope3d: tables built once per call outside the compiled region, the
rotation in float32 inside it, cast back like ComfyUI's apply_rope1);
``score_mod`` multiplies each scaled logit by ``table[g_q[q_idx], g_k[kv_idx]]``. The whole function is one
``torch.compile`` region, so on a CPU Inductor emits a C++ kernel for the attention and fuses the RoPE arithmetic
(static shapes: one compile per kind and shape of call, ~10–20 s each on 2 cores; Inductor's CPU FlexAttention
with dynamic sizes fails to build in torch 2.14, so sizes stay static). The path for CPUs and
for GPUs the Triton kernel does not serve. FlexAttention has no CPU backward: inference only; compiled on a CPU
it cannot return the log-sum-exp either (None then; the eager path returns it).
Two measured specialisations keep the kernel near SDPA's speed on a CPU (benchmarks/attention_kernels.py):
every call gets a prebuilt all-*full* BlockMask with 256 × 512 blocks (FlexAttention's default mask marks
every block partial, so it evaluates a no-op mask per logit: ~6% slower), and a uniform table (one value c:
self-attention, TMA on Wan's text-only cross-attention) multiplies q by c before the kernel instead of reading the
table per logit in ``score_mod`` (~10%); c stays a tensor, so a new α per step does not recompile.
Imported lazily (FlexAttention and Inductor are heavy imports).
"""
from __future__ import annotations

import threading

import torch
import torch._dynamo
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, flex_attention, noop_mask

from .rope3d import RopeSpec, rope_factors, rotate


BLOCK_Q, BLOCK_KV = 256, 512
RECOMPILE_LIMIT = 256          # compiled variants per function (Dynamo's default: 8)


def _prepare(q, k, q_rope, k_rope, table, uniform: bool):
    """q (and k when it is rotated) from [B, L, H, d] to rotated / scaled [B, H, L, d] contiguous copies.
    A region of its own: fused into the attention region, Inductor recomputes it inside the kernel's loads
    (~12% slower, measured)."""
    dtype = q.dtype
    q = rotate(q, *q_rope) if q_rope is not None else q.float()
    if uniform:   # every logit × c  ≡  q × c, in the same pass as the rotation
        q = q * table[0, 0]
    q = q.to(dtype).transpose(1, 2).contiguous()
    if k_rope is not None:
        k = rotate(k, *k_rope).to(dtype).transpose(1, 2).contiguous()
    return q, k


def _attend(q, k, v, q_groups, k_groups, table, sm_scale: float, want_lse: bool, block_mask: BlockMask,
            uniform: bool):
    # q, k, v as [B, H, L, d] contiguous (on transposed views Inductor's CPU FlexAttention kernel runs ~1.45×
    # slower, measured)
    score_mod = None
    if not uniform:
        def score_mod(score, b, h, q_idx, kv_idx):
            return score * table[q_groups[q_idx], k_groups[kv_idx]]

    if not want_lse:
        out = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=sm_scale)
        return out.transpose(1, 2), None
    out, aux = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=sm_scale,
                              return_aux=AuxRequest(lse=True))
    return out.transpose(1, 2), aux.lse


_masks: dict[tuple, BlockMask] = {}


def full_block_mask(lq: int, lk: int, device) -> BlockMask:
    """Every (query block, key block) pair full: no mask is evaluated inside the kernel."""
    key = (lq, lk, str(device))
    with _lock:
        if key not in _masks:
            if len(_masks) > 32:
                _masks.clear()
            nq, nk = -(-lq // BLOCK_Q), -(-lk // BLOCK_KV)
            ints = dict(dtype=torch.int32, device=device)
            _masks[key] = BlockMask.from_kv_blocks(
                torch.zeros(1, 1, nq, **ints), torch.zeros(1, 1, nq, nk, **ints),
                torch.full((1, 1, nq), nk, **ints), torch.arange(nk, **ints).expand(1, 1, nq, nk).contiguous(),
                BLOCK_SIZE=(BLOCK_Q, BLOCK_KV), mask_mod=noop_mask, seq_lengths=(lq, lk))
        return _masks[key]


_lock = threading.Lock()
_compiled = None


def compiled_attention():
    """(prepare, attend) compiled once per process (static shapes: one compile per kind and shape of call)."""
    global _compiled
    with _lock:
        if _compiled is None:
            _compiled = (torch.compile(_prepare, fullgraph=True, dynamic=False),
                         torch.compile(_attend, fullgraph=True, dynamic=False))
        return _compiled


def flex_rope_attention(q, k, v, q_positions, k_positions, rope: RopeSpec | None, q_groups, k_groups, table,
                        sm_scale: float, compiled: bool = True):
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("the FlexAttention path is inference only (no CPU backward): run it under torch.no_grad()")
    prepare, attend = compiled_attention() if compiled else (_prepare, _attend)
    q_rope = k_rope = None
    if rope is not None:   # the cos/sin tables once per call, outside the regions (not recomputed per head)
        q_rope = rope_factors(q_positions.to(q.device), rope)
        k_rope = q_rope if k_positions is q_positions else rope_factors(k_positions.to(q.device), rope)
    want_lse = not (compiled and q.device.type == "cpu")  # Inductor's CPU FlexAttention cannot return it (2.14)
    uniform = table.numel() == 1 or bool((table == table.flatten()[0]).all())
    # every shape and kind of call is a compiled variant of the same two functions: Dynamo's default of 8 per
    # function would end a long session (many window sizes, references, tiles) in a hard error
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        q, k = prepare(q, k, q_rope, k_rope, table, uniform)
        if k_rope is None:
            k = k.transpose(1, 2).contiguous()
        v = v.transpose(1, 2).contiguous()
        mask = full_block_mask(q.shape[2], k.shape[2], q.device)
        out, lse = attend(q, k, v, q_groups, k_groups, table, sm_scale, want_lse, mask, uniform)
    return out.contiguous(), (lse.float() if lse is not None else None)
