"""A Triton flash-attention forward with 3D RoPE applied while q and k are loaded and a (query group, key group)
logit-scale table applied to the logits in the same pass (see core.attention.fused for the semantics).

One program handles BLOCK_M queries of one (batch, head): it loads them as two half-width tiles (the first and
second channel of every rotated pair), turns them by angles computed from the tokens' (t, h, w) positions and the
per-pair frequency/axis tables (reduced modulo 2π in float32 parts, so far positions stay accurate), then streams
BLOCK_N keys at a time, turning each key tile the same way, so rotated q and k exist only in registers:
q·kᵀ = q_even·k_evenᵀ + q_odd·k_oddᵀ. Logits are multiplied by softmax scale and ``table[g_q, g_k]`` and go
through the online softmax (base 2); keys past the end are masked to −inf, so any length works. The rotated
halves are cast back to the input dtype before the dot products, as ComfyUI's apply_rope1 does.
Returns the output and the natural-log log-sum-exp of the scaled logits per query.

Imported lazily (it imports triton). On a CPU, only with TRITON_INTERPRET=1 set before triton is imported
(Triton's interpreter: slow, for tests); the interpreter has no bfloat16 dot, so there the bf16 operands are
multiplied in float32 (on a GPU the dots run in bf16 with float32 accumulation). Its float32 → bfloat16 conversions
truncate where a GPU rounds to nearest, so interpreted bf16 results are less accurate than a GPU's (the tests check
them against an emulation of those roundings).
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .backend_status import interpreter_enabled
from .rope3d import RopeSpec, pair_frequencies, split_frequencies

LOG2E = 1.4426950408889634


# 2π in three float32 parts for the reduction of RoPE angles (Cody–Waite): the first has 8 significant bits, so
# n·TWO_PI_HI is exact for every n < 2^16 that positions up to ~10^4 give
TWO_PI_HI = tl.constexpr(6.28125)
TWO_PI_MID = tl.constexpr(1.9353071693331003e-3)
TWO_PI_LO = tl.constexpr(1.0253131677018246e-11)
INV_TWO_PI = tl.constexpr(0.15915494309189535)


def _rope_flash_fwd(Q, K, V, O, LSE, QPOS, KPOS, INV_HI, INV_LO, AXIS, QG, KG, TABLE,  # noqa: E741 (FlashAttention's O)
                    qk_scale, Lq, Lk, H, n_kgroups,
                    sqb, sql, sqh, sqd, skb, skl, skh, skd, svb, svl, svh, svd, sob, sol, soh, sod,
                    HALF: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    ROPE: tl.constexpr, ADJACENT: tl.constexpr, IEEE: tl.constexpr,
                    UPCAST_DOT: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < Lq
    j = tl.arange(0, HALF)
    if ADJACENT:
        d_first = 2 * j
        d_second = 2 * j + 1
    else:
        d_first = j
        d_second = j + HALF
    d_all = tl.arange(0, HEAD_DIM)

    q_ptr = Q + b * sqb + h * sqh + offs_m[:, None] * sql
    q1 = tl.load(q_ptr + d_first[None, :] * sqd, mask=m_valid[:, None], other=0.0)
    q2 = tl.load(q_ptr + d_second[None, :] * sqd, mask=m_valid[:, None], other=0.0)
    if ROPE:
        inv_hi = tl.load(INV_HI + j)
        inv_lo = tl.load(INV_LO + j)
        axis = tl.load(AXIS + j)
        qpos = tl.load(QPOS + offs_m[:, None] * 3 + axis[None, :], mask=m_valid[:, None], other=0.0)
        # pos·ω reduced modulo 2π in float32 parts: ω = inv_hi + inv_lo with inv_hi keeping 12 significant bits, so
        # pos·inv_hi is exact for grid positions below 4096; 2π is taken off in three parts, pos·inv_lo added last
        # (~1e-7 rad at t = 1000, where a plain float32 product is off by ~1e-4)
        a = qpos * inv_hi[None, :]
        n = tl.floor(a * INV_TWO_PI + 0.5)
        ang = ((a - n * TWO_PI_HI) - n * TWO_PI_MID) - n * TWO_PI_LO + qpos * inv_lo[None, :]
        c = tl.cos(ang)
        s = tl.sin(ang)
        q1f = q1.to(tl.float32)
        q2f = q2.to(tl.float32)
        q1 = (q1f * c - q2f * s).to(Q.dtype.element_ty)
        q2 = (q1f * s + q2f * c).to(Q.dtype.element_ty)
    qg = tl.load(QG + offs_m, mask=m_valid, other=0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    for start_n in range(0, Lk, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_valid = offs_n < Lk
        k_ptr = k_base + offs_n[:, None] * skl
        k1 = tl.load(k_ptr + d_first[None, :] * skd, mask=n_valid[:, None], other=0.0)
        k2 = tl.load(k_ptr + d_second[None, :] * skd, mask=n_valid[:, None], other=0.0)
        if ROPE:
            kpos = tl.load(KPOS + offs_n[:, None] * 3 + axis[None, :], mask=n_valid[:, None], other=0.0)
            ka = kpos * inv_hi[None, :]   # reduced as the queries' angles
            kn = tl.floor(ka * INV_TWO_PI + 0.5)
            kang = ((ka - kn * TWO_PI_HI) - kn * TWO_PI_MID) - kn * TWO_PI_LO + kpos * inv_lo[None, :]
            kc = tl.cos(kang)
            ks = tl.sin(kang)
            k1f = k1.to(tl.float32)
            k2f = k2.to(tl.float32)
            k1 = (k1f * kc - k2f * ks).to(K.dtype.element_ty)
            k2 = (k1f * ks + k2f * kc).to(K.dtype.element_ty)
        if UPCAST_DOT:  # the interpreter has no bfloat16 dot: same bf16-rounded values, in float32
            logits = tl.dot(q1.to(tl.float32), tl.trans(k1.to(tl.float32)), input_precision="ieee")
            logits = tl.dot(q2.to(tl.float32), tl.trans(k2.to(tl.float32)), logits, input_precision="ieee")
        elif IEEE:
            logits = tl.dot(q1, tl.trans(k1), input_precision="ieee")
            logits = tl.dot(q2, tl.trans(k2), logits, input_precision="ieee")
        else:
            logits = tl.dot(q1, tl.trans(k1))
            logits = tl.dot(q2, tl.trans(k2), logits)
        kg = tl.load(KG + offs_n, mask=n_valid, other=0)
        group_scale = tl.load(TABLE + qg[:, None] * n_kgroups + kg[None, :])
        logits = logits * (group_scale * qk_scale)
        logits = tl.where(n_valid[None, :], logits, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(logits, 1))
        p = tl.exp2(logits - m_new[:, None])
        correction = tl.exp2(m_i - m_new)
        l_i = l_i * correction + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * svl + d_all[None, :] * svd, mask=n_valid[:, None], other=0.0)
        if UPCAST_DOT:
            acc = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), acc * correction[:, None],
                         input_precision="ieee")
        elif IEEE:
            acc = tl.dot(p.to(v.dtype), v, acc * correction[:, None], input_precision="ieee")
        else:
            acc = tl.dot(p.to(v.dtype), v, acc * correction[:, None])
        m_i = m_new
    out = acc / l_i[:, None]
    o_ptr = O + b * sob + h * soh + offs_m[:, None] * sol + d_all[None, :] * sod
    tl.store(o_ptr, out.to(O.dtype.element_ty), mask=m_valid[:, None])
    tl.store(LSE + pid_bh * Lq + offs_m, (m_i + tl.log2(l_i)) / 1.4426950408889634, mask=m_valid)


_kernels: dict[bool, object] = {}


def _kernel(interpret: bool):
    """The jitted kernel; with ``interpret`` an interpreted one (Triton chooses when it decorates)."""
    if interpret not in _kernels:
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction
            _kernels[interpret] = InterpretedFunction(_rope_flash_fwd)
        else:
            _kernels[interpret] = triton.jit(_rope_flash_fwd)
    return _kernels[interpret]


_freq_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _frequencies(spec: RopeSpec, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    key = (spec, str(device))
    if key not in _freq_cache:
        inv, axes = pair_frequencies(spec)
        hi, lo = split_frequencies(inv)
        _freq_cache[key] = (hi.to(device), lo.to(device), axes.to(device))
    return _freq_cache[key]


def triton_rope_attention(q, k, v, q_positions, k_positions, rope: RopeSpec | None, q_groups, k_groups, table,
                          sm_scale: float, block_m: int | None = None, block_n: int | None = None,
                          interpret: bool | None = None):
    interpret = interpreter_enabled() if interpret is None else interpret
    if not interpret and not q.is_cuda:
        raise ValueError(f"the Triton kernel runs on CUDA tensors (got {q.device}); set TRITON_INTERPRET=1 to "
                         f"interpret it on the CPU")
    b, lq, h, d = q.shape
    lk = k.shape[1]
    o = torch.empty(b, lq, h, d, device=q.device, dtype=q.dtype)
    lse = torch.empty(b, h, lq, device=q.device, dtype=torch.float32)
    if rope is not None:
        inv_hi, inv_lo, axes = _frequencies(rope, q.device)
        qpos = q_positions.to(device=q.device, dtype=torch.float32).contiguous()
        kpos = k_positions.to(device=q.device, dtype=torch.float32).contiguous()
        adjacent = rope.pairing == "adjacent"
    else:
        inv_hi = inv_lo = torch.zeros(d // 2, device=q.device, dtype=torch.float32)
        axes = torch.zeros(d // 2, device=q.device, dtype=torch.int32)
        qpos = kpos = torch.zeros(1, 3, device=q.device, dtype=torch.float32)
        adjacent = True
    if block_m is None:
        block_m = 64 if d <= 64 or q.dtype != torch.float32 else 32
    if block_n is None:
        block_n = 64 if d <= 64 or q.dtype != torch.float32 else 32
    grid = (triton.cdiv(lq, block_m), b * h)
    # launched on the tensors' device, whichever device is current in the calling thread
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _kernel(interpret)[grid](
            q, k, v, o, lse, qpos, kpos, inv_hi, inv_lo, axes, q_groups, k_groups, table,
            sm_scale * 1.4426950408889634, lq, lk, h, table.shape[1],
            *q.stride(), *k.stride(), *v.stride(), *o.stride(),
            HALF=d // 2, HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, ROPE=rope is not None, ADJACENT=adjacent,
            IEEE=q.dtype == torch.float32, UPCAST_DOT=interpret and q.dtype == torch.bfloat16)
    return o, lse

