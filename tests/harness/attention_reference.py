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


FP32_CASES = ["unimmvsr_self_fp32", "taca_joint_fp32", "tma_cross_fp32", "mfm_half_pairing_fp32"]
LOW_CASES = ["unimmvsr_self_bf16", "unimmvsr_self_fp16"]
LOW_TOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}


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


