"""The plain-math reference of the fused attention kernels (issue 13) and the cases both backends are checked on:
RoPE computed from explicit (t, h, w) positions with Wan's split, explicit logits × group table, softmax, in
float64. Shared by tests/test_attention_kernels.py and the interpreter subprocess (harness/triton_interpreted.py).
``pack`` is a function returning a pack submodule (harness.paths.pack_module)."""
import math

import torch

FP32_TOL = 1e-5


# --- the reference ---------------------------------------------------------------------------------------

def wan_axes(d):
    """Wan's split of the head dim between t, h, w (comfy/ldm/wan/model.py: rope_embedder)."""
    return (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))


def explicit_rope(x, positions, axes, theta=10000.0, pairing="adjacent"):
    """x [B, L, H, d] float64 rotated pair by pair: pair i of an axis of width n turns by pos·θ^(−2i/n)."""
    angles = []
    for axis, n in enumerate(axes):
        for i in range(n // 2):
            angles.append(positions[:, axis].double() * theta ** (-2.0 * i / n))
    ang = torch.stack(angles, dim=-1)[None, :, None, :]
    c, s = torch.cos(ang), torch.sin(ang)
    d = x.shape[-1]
    out = torch.empty_like(x)
    if pairing == "adjacent":
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
    else:
        a, b = x[..., : d // 2], x[..., d // 2:]
        out[..., : d // 2], out[..., d // 2:] = a * c - b * s, a * s + b * c
    return out


def reference_attention(q, k, v, q_pos, k_pos, axes, pairing, scale_table):
    """(out [B, Lq, H, d], lse [B, H, Lq]) of softmax(table ⊙ (Rq)(Rk)ᵀ/√d)·v in float64."""
    q64, k64, v64 = q.double(), k.double(), v.double()
    if axes is not None:
        q64 = explicit_rope(q64, q_pos, axes, pairing=pairing)
        k64 = explicit_rope(k64, k_pos, axes, pairing=pairing)
    logits = torch.einsum("blhd,bmhd->bhlm", q64, k64) / math.sqrt(q.shape[-1]) * scale_table.double()
    lse = torch.logsumexp(logits, dim=-1)
    out = torch.einsum("bhlm,bmhd->blhd", logits.softmax(-1), v64)
    return out, lse


def grid(frames, h, w, t_start=0):
    t, y, x = torch.meshgrid(torch.arange(t_start, t_start + frames), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([t.flatten(), y.flatten(), x.flatten()], dim=-1)


def unimmvsr_positions():
    """A 2×3×3 target, an ID image at t = 20 and a 2-frame reference video from t = 30: 45 tokens."""
    return torch.cat([grid(2, 3, 3), grid(1, 3, 3, 20), grid(2, 3, 3, 30)])


def make_case(name, pack):
    fused = pack("core.attention.fused")
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    rnd = lambda *shape: torch.randn(*shape, generator=g)
    if name == "unimmvsr_self_fp32":     # self-attention over target + references, d 128
        pos = unimmvsr_positions()
        b, h, d, L = 1, 2, 128, pos.shape[0]
        return dict(q=rnd(b, L, h, d), k=rnd(b, L, h, d), v=rnd(b, L, h, d), q_pos=pos, k_pos=pos,
                    axes=wan_axes(d), pairing="adjacent", groups=fused.GroupTable.uniform(), dtype=torch.float32)
    if name == "taca_joint_fp32":        # joint text+image sequence: γ on image-query × text-key only, d 64
        n_text, L = 7, 30
        pos = torch.cat([torch.zeros(n_text, 3, dtype=torch.long), grid(2, 3, 4)[:L - n_text]])
        b, h, d = 2, 2, 64
        return dict(q=rnd(b, L, h, d), k=rnd(b, L, h, d), v=rnd(b, L, h, d), q_pos=pos, k_pos=pos,
                    axes=wan_axes(d), pairing="adjacent", groups=fused.GroupTable.joint(n_text, L, rest_to_first=1.2),
                    dtype=torch.float32)
    if name == "tma_cross_fp32":         # cross-attention: no RoPE, every key is text: α = 1.3
        b, h, d, lq, lk = 2, 1, 64, 23, 9
        return dict(q=rnd(b, lq, h, d), k=rnd(b, lk, h, d), v=rnd(b, lk, h, d), q_pos=None, k_pos=None, axes=None,
                    pairing="adjacent", groups=fused.GroupTable.uniform(1.3), dtype=torch.float32)
    if name == "mfm_half_pairing_fp32":  # MfM's 1/4 : 3/8 : 3/8 split, rotate-half pairing, 3 query groups
        pos = grid(1, 4, 5, 3)
        b, h, d, L = 1, 1, 64, pos.shape[0]
        qg = torch.arange(L, dtype=torch.int32) % 3
        kg = (torch.arange(L, dtype=torch.int32) // 7).clamp(max=1)
        table = torch.tensor([[1.0, 0.7], [1.1, 1.4], [0.9, 1.0]])
        return dict(q=rnd(b, L, h, d), k=rnd(b, L, h, d), v=rnd(b, L, h, d), q_pos=pos, k_pos=pos,
                    axes=(16, 24, 24), pairing="half", groups=fused.GroupTable(table, qg, kg), dtype=torch.float32)
    if name == "far_positions_fp32":     # temporal positions near 1000: angles of thousands of radians
        pos = torch.cat([grid(2, 3, 3, 995), grid(1, 3, 3, 1000)])
        b, h, d, L = 1, 2, 128, pos.shape[0]
        return dict(q=rnd(b, L, h, d), k=rnd(b, L, h, d), v=rnd(b, L, h, d), q_pos=pos, k_pos=pos,
                    axes=wan_axes(d), pairing="adjacent", groups=fused.GroupTable.uniform(), dtype=torch.float32)
    if name == "multi_block_self_fp32":  # several 256 × 512 kernel blocks with ragged tails; references; α = 1.2
        pos = torch.cat([grid(3, 10, 15), grid(1, 10, 15, 20), grid(1, 10, 15, 30)])[:700]
        b, h, d, L = 1, 1, 64, pos.shape[0]
        return dict(q=rnd(b, L, h, d), k=rnd(b, L, h, d), v=rnd(b, L, h, d), q_pos=pos, k_pos=pos,
                    axes=wan_axes(d), pairing="adjacent", groups=fused.GroupTable.uniform(1.2), dtype=torch.float32)
    if name == "multi_block_cross_fp32":  # Lq ≠ Lk over several blocks, no RoPE, α = 1.2
        b, h, d, lq, lk = 1, 1, 64, 300, 530
        return dict(q=rnd(b, lq, h, d), k=rnd(b, lk, h, d), v=rnd(b, lk, h, d), q_pos=None, k_pos=None, axes=None,
                    pairing="adjacent", groups=fused.GroupTable.uniform(1.2), dtype=torch.float32)
    if name in ("unimmvsr_self_bf16", "unimmvsr_self_fp16"):
        pos = unimmvsr_positions()[:33]
        b, h, d, L = 1, 1, 128, pos.shape[0]
        dtype = torch.bfloat16 if name.endswith("bf16") else torch.float16
        return dict(q=rnd(b, L, h, d), k=rnd(b, L, h, d), v=rnd(b, L, h, d), q_pos=pos, k_pos=pos,
                    axes=wan_axes(d), pairing="adjacent", groups=fused.GroupTable.uniform(1.2), dtype=dtype)
    raise KeyError(name)


FP32_CASES = ["unimmvsr_self_fp32", "taca_joint_fp32", "tma_cross_fp32", "mfm_half_pairing_fp32", "far_positions_fp32"]
LOW_CASES = ["unimmvsr_self_bf16", "unimmvsr_self_fp16"]
LOW_TOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}   # flex (eager) against float64; Triton bf16: bf16_report


def run_case(pack, case, backend, **options):
    fused = pack("core.attention.fused")
    rope3d = pack("core.attention.rope3d")
    spec = rope3d.RopeSpec(case["axes"], 10000.0, case["pairing"]) if case["axes"] else None
    q, k, v = (case[n].to(case["dtype"]) for n in "qkv")
    with torch.no_grad():
        out, lse = fused.rope_attention(backend, q, k, v, q_positions=case["q_pos"], k_positions=case["k_pos"],
                                        rope=spec, groups=case["groups"], **options)
    table = case["groups"].dense(q.shape[1], k.shape[1])
    want_out, want_lse = reference_attention(q, k, v, case["q_pos"], case["k_pos"], case["axes"], case["pairing"],
                                             table)
    assert out.dtype == case["dtype"] and out.shape == q.shape
    assert lse is None or lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    lse_err = 0.0 if lse is None else (lse.double() - want_lse).abs().max().item()
    return (out.double() - want_out).abs().max().item(), lse_err




# --- the Triton kernel's arithmetic, emulated in float64 with its bfloat16 roundings --------------------------

def round_bf16(x: torch.Tensor, mode: str, dtype=torch.bfloat16) -> torch.Tensor:
    """float64 → the nearest ``dtype`` value (``"nearest"``: round-to-nearest-even, as a GPU converts) or the
    bfloat16 one towards zero (``"truncate"``: what Triton's CPU interpreter does), returned as float64."""
    if mode == "nearest":
        return x.to(dtype).double()
    bits = x.float().view(torch.int32) & ~0xFFFF      # drop the low 16 bits of the float32 pattern
    return bits.view(torch.float32).double()


def emulate_kernel_bf16(q, k, v, q_pos, k_pos, axes, pairing, scale_table, rounding: str, block_n: int = 16,
                        dtype=torch.bfloat16):
    """What the Triton kernel computes on bfloat16 inputs, step by step in float64 except where it rounds to
    bfloat16 (with ``rounding``): rotated q and k, each block's probabilities before p·v, and the output. Blocks of
    ``block_n`` keys with the online softmax's running maximum, as the kernel walks them. (out, lse) like
    reference_attention. Used to check the interpreter tightly (truncation) and to bound a GPU's error (nearest;
    ``dtype`` float16 for the fp16 kernel)."""
    rnd = lambda x: round_bf16(x, rounding, dtype)  # noqa: E731
    q64, k64, v64 = q.double(), k.double(), v.double()
    if axes is not None:
        q64 = rnd(explicit_rope(q64, q_pos, axes, pairing=pairing))
        k64 = rnd(explicit_rope(k64, k_pos, axes, pairing=pairing))
    logits = torch.einsum("blhd,bmhd->bhlm", q64, k64) / math.sqrt(q.shape[-1]) * torch.as_tensor(scale_table).double()
    b, h, lq, lk = logits.shape
    m = torch.full((b, h, lq), float("-inf"), dtype=torch.float64, device=q.device)
    l_sum = torch.zeros(b, h, lq, dtype=torch.float64, device=q.device)
    acc = torch.zeros(b, h, lq, v.shape[-1], dtype=torch.float64, device=q.device)
    for start in range(0, lk, block_n):
        block = logits[..., start:start + block_n]
        m_new = torch.maximum(m, block.amax(-1))
        p = torch.exp(block - m_new[..., None])
        correction = torch.exp(m - m_new)
        l_sum = l_sum * correction + p.sum(-1)
        acc = acc * correction[..., None] + torch.einsum("bhlm,bmhd->bhld", rnd(p),
                                                         v64[:, start:start + block_n])
        m = m_new
    out = rnd(acc / l_sum[..., None]).permute(0, 2, 1, 3)
    return out, m + torch.log(l_sum)


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 values at |x| (2^(e−7) for x in [2^e, 2^(e+1)))."""
    exponent = torch.floor(torch.log2(x.abs().clamp(min=2.0 ** -126)))
    return 2.0 ** (exponent - 7)


def bf16_report(pack, case, out, lse, block_n):
    """The bfloat16 kernel's output against the emulation of its own arithmetic with ``rounding`` as Triton's
    interpreter rounds (truncation): the largest difference in bfloat16 spacings of the emulated value, and of the
    log-sum-exp; and the float64 errors of both emulations, the nearest-rounding one being what a GPU's kernel
    should show (benchmarks/gpu_suite.py holds a GPU to twice it)."""
    q, k, v = (case[n].to(case["dtype"]) for n in "qkv")
    table = case["groups"].dense(q.shape[1], k.shape[1])
    args = (q, k, v, case["q_pos"], case["k_pos"], case["axes"], case["pairing"], table)
    exact, _ = reference_attention(*args)
    truncated, truncated_lse = emulate_kernel_bf16(*args, rounding="truncate", block_n=block_n)
    nearest, _ = emulate_kernel_bf16(*args, rounding="nearest", block_n=block_n)
    return {"ulps_from_truncating_emulation": ((out.double() - truncated).abs() / bf16_ulp(truncated)).max().item(),
            "lse_from_truncating_emulation": (lse.double() - truncated_lse).abs().max().item(),
            "truncating_error": (truncated - exact).abs().max().item(),
            "nearest_error": (nearest - exact).abs().max().item(),
            "kernel_error": (out.double() - exact).abs().max().item()}


# --- wiring helpers on the real ComfyUI Wan modules (ComfyUI importable in this process) --------------------

def load(model_name, seed=0, **overrides):
    import comfy.sd
    from harness.tiny_models import WAN_VARIANTS, build_wan

    variant = {**WAN_VARIANTS[model_name], **overrides}
    sd = {k: v.float() for k, v in build_wan(seed=seed, **variant).state_dict().items()}
    return comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.float32})


def run_block(patcher, x, freqs, context, extra_options=None):
    """Block 0 of the patched model: self-attention, cross-attention, FFN, with the patches applied."""
    dm = patcher.model.diffusion_model
    options = dict(patcher.model_options.get("transformer_options", {}))
    options.update(extra_options or {})
    e = torch.randn(x.shape[0], 6, dm.dim, generator=torch.Generator().manual_seed(7))
    patcher.patch_model()
    try:
        with torch.no_grad():
            return dm.blocks[0](x, e=e, freqs=freqs, context=context, context_img_len=None,
                                transformer_options=options)
    finally:
        patcher.unpatch_model()


def unimmvsr_freqs(pack, dm):
    layout = pack("core.unimmvsr.reference_layout").layout(2, [1], [2], 20, 30)
    return pack("core.unimmvsr.forward").reference_freqs(dm, 2, 6, 6, layout, torch.device("cpu"), torch.float32)


def tma_state(pack, alpha):
    boost = pack("samplers.attention_boost")
    return {boost.STATE_KEY: boost.Boost(text=alpha, image=1.0)}


def tma(pack, model, alpha):
    boost = pack("samplers.attention_boost")
    return boost.apply_attention_boost(model, "wan", boost.BoostSchedule(factors=lambda u: (alpha, 1.0)))


def backend(pack, model, choice):
    return pack("samplers.attention_backends").apply_attention_backend(model, choice)


