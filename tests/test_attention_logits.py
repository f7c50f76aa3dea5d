"""The patched attention equals an explicit reference that materialises the logits and scales them.

Runs the real ComfyUI modules in-process: a tiny Wan model loaded through ComfyUI's diffusion-model loader,
patched by the pack, and its cross-attention forwards (text, I2V image branch, VACE blocks); a tiny Flux
model's double and single blocks for joint attention (TACA / TMA on MM-DiT).
"""
import math

import pytest
import torch

TOL = 1e-5


def load_wan(variant, seed=0):
    import comfy.sd
    from harness.tiny_models import WAN_VARIANTS, build_wan

    sd = {k: v.float() for k, v in build_wan(seed=seed, **WAN_VARIANTS[variant]).state_dict().items()}
    return comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.float32})


def materialised_attention(q, k, v, heads, logit_scale):
    """softmax(S ⊙ q·kᵀ/√d)·v with S given per (query, key); q, k, v: [B, S, H·D]."""
    b, sq, hd = q.shape
    d = hd // heads
    qh = q.view(b, sq, heads, d).transpose(1, 2).double()
    kh = k.view(b, k.shape[1], heads, d).transpose(1, 2).double()
    vh = v.view(b, v.shape[1], heads, d).transpose(1, 2).double()
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(d) * logit_scale.double()
    out = logits.softmax(-1) @ vh
    return out.transpose(1, 2).reshape(b, sq, hd).to(q.dtype)


def wan_cross_reference(module, x, context, alpha_txt, alpha_img=None, img_len=None):
    heads = module.num_heads
    if img_len is not None:
        ctx_img, context = context[:, :img_len], context[:, img_len:]
    q = module.norm_q(module.q(x))
    k = module.norm_k(module.k(context))
    out = materialised_attention(q, k, module.v(context), heads, torch.tensor(alpha_txt))
    if img_len is not None:
        k_img = module.norm_k_img(module.k_img(ctx_img))
        out = out + materialised_attention(q, k_img, module.v_img(ctx_img), heads, torch.tensor(alpha_img))
    return module.o(out)


def patched(pack, model, family, text, image):
    boost_mod = pack("samplers.attention_boost")
    schedule = boost_mod.BoostSchedule(factors=lambda u: (text, image))
    m = boost_mod.apply_attention_boost(model, family, schedule)
    options = {"optimized_attention_override": m.model_options["transformer_options"]["optimized_attention_override"],
               boost_mod.STATE_KEY: boost_mod.Boost(text=text, image=image)}
    return m, options


@pytest.mark.parametrize("alpha", [1.3, 0.8])
def test_wan_text_cross_attention(pack, alpha):
    model = load_wan("wan2.1_t2v_1.3B_fp16.safetensors")
    m, options = patched(pack, model, "wan", alpha, 1.0)
    block = model.model.diffusion_model.blocks[1].cross_attn
    forward = m.object_patches["diffusion_model.blocks.1.cross_attn.forward"]
    torch.manual_seed(0)
    x, ctx = torch.randn(2, 24, 128), torch.randn(2, 7, 128)
    with torch.no_grad():
        got = forward(x, ctx, transformer_options=options)
        want = wan_cross_reference(block, x, ctx, alpha)
        plain = block(x, ctx, transformer_options={})
    assert (got - want).abs().max() <= TOL
    assert (plain - want).abs().max() > 1e-3  # the boost changed something


def test_wan_i2v_image_and_text_branches(pack):
    model = load_wan("wan2.1_i2v_480p_14B_fp16.safetensors")
    m, options = patched(pack, model, "wan", 1.25, 1.1)
    block = model.model.diffusion_model.blocks[0].cross_attn
    forward = m.object_patches["diffusion_model.blocks.0.cross_attn.forward"]
    torch.manual_seed(1)
    x, ctx = torch.randn(1, 16, 128), torch.randn(1, 257 + 9, 128)
    with torch.no_grad():
        got = forward(x, ctx, context_img_len=257, transformer_options=options)
        want = wan_cross_reference(block, x, ctx, 1.25, 1.1, img_len=257)
        swapped = wan_cross_reference(block, x, ctx, 1.1, 1.25, img_len=257)
    assert (got - want).abs().max() <= TOL
    assert (got - swapped).abs().max() > 1e-4  # image and text factors are told apart


def test_wan_self_attention_untouched_and_vace_blocks_patched(pack):
    model = load_wan("wan2.1_vace_1.3B_fp16.safetensors")
    m, options = patched(pack, model, "wan", 1.3, 1.0)
    keys = sorted(k for k in m.object_patches if k.endswith(".forward"))
    assert keys == ["diffusion_model.blocks.0.cross_attn.forward", "diffusion_model.blocks.1.cross_attn.forward",
                    "diffusion_model.vace_blocks.0.cross_attn.forward"]
    dm = model.model.diffusion_model
    attn = dm.blocks[0].self_attn
    torch.manual_seed(2)
    x = torch.randn(1, 2 * 4 * 4, 128)
    freqs = dm.rope_encode(2, 8, 8, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        a = attn(x, freqs, transformer_options=options)
        b = attn(x, freqs, transformer_options={})
    assert torch.equal(a, b)


def test_unsupported_model_is_named(pack, comfy_in_process):
    families = pack("samplers.model_families")

    class NotAPatcher:
        class model:
            diffusion_model = torch.nn.Linear(2, 2)
    with pytest.raises(families.UnsupportedModelError, match="Linear"):
        families.require_family(NotAPatcher(), ("wan",), "TMA")


# --- joint attention (Flux) ------------------------------------------------------------------------------

def tiny_flux():
    import dataclasses

    from comfy.ldm.flux.model import Flux, FluxParams

    torch.manual_seed(3)
    # newer hosts add a required FluxParams field (the text ids' RoPE axes; none for Flux 1)
    extra = {"txt_ids_dims": []} if any(f.name == "txt_ids_dims" for f in dataclasses.fields(FluxParams)) else {}
    model = Flux(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=64,
                 hidden_size=128, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1,
                 axes_dim=[16, 24, 24], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False,
                 operations=torch.nn, **extra)
    norms = ("query_norm.scale", "key_norm.scale", "query_norm.weight", "key_norm.weight")   # old / new QKNorm
    with torch.no_grad():  # Flux allocates some parameters with torch.empty: give every one a defined value
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith(norms) else p.normal_(0, 0.1)
    return model.float().eval()


def joint_reference_override(n_text, gamma):
    def override(func, q, k, v, heads, *args, skip_reshape=False, mask=None, **kwargs):
        b, h, s, d = q.shape
        scale = torch.ones(s, s)
        scale[n_text:, :n_text] = gamma  # image queries × text keys
        flat = lambda t: t.transpose(1, 2).reshape(b, s, h * d)
        return materialised_attention(flat(q), flat(k), flat(v), heads, scale)
    return override


@pytest.mark.parametrize("gamma", [1.2, 1.0])
def test_flux_joint_attention(pack, gamma):
    boost_mod = pack("samplers.attention_boost")
    import comfy.model_patcher

    dm = tiny_flux()

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = dm
    patcher = comfy.model_patcher.ModelPatcher(Holder(), torch.device("cpu"), torch.device("cpu"))
    schedule = boost_mod.BoostSchedule(factors=lambda u: (gamma, 1.0))
    m = boost_mod.apply_attention_boost(patcher, "flux", schedule)
    override = m.model_options["transformer_options"]["optimized_attention_override"]
    n_text, n_img = 5, 16
    torch.manual_seed(4)
    img, txt = torch.randn(1, n_img, 128), torch.randn(1, n_text, 128)
    vec = torch.randn(1, 128)
    pe = dm.pe_embedder(torch.zeros(1, n_text + n_img, 3))
    ours = {"optimized_attention_override": override,
            boost_mod.STATE_KEY: boost_mod.Boost(text=gamma, image=1.0, text_tokens=n_text)}
    ref = {"optimized_attention_override": joint_reference_override(n_text, gamma)}
    with torch.no_grad():
        got_img, got_txt = dm.double_blocks[0](img=img.clone(), txt=txt.clone(), vec=vec, pe=pe,
                                               transformer_options=ours)
        want_img, want_txt = dm.double_blocks[0](img=img.clone(), txt=txt.clone(), vec=vec, pe=pe,
                                                 transformer_options=ref)
        joint = torch.cat([txt, img], 1)
        got_single = dm.single_blocks[0](joint.clone(), vec=vec, pe=pe, transformer_options=ours)
        want_single = dm.single_blocks[0](joint.clone(), vec=vec, pe=pe, transformer_options=ref)
        plain_img, _ = dm.double_blocks[0](img=img.clone(), txt=txt.clone(), vec=vec, pe=pe, transformer_options={})
    assert (got_img - want_img).abs().max() <= TOL
    assert (got_txt - want_txt).abs().max() <= TOL
    assert (got_single - want_single).abs().max() <= TOL
    if gamma != 1.0:
        assert (plain_img - want_img).abs().max() > 1e-4


def test_composes_with_an_existing_attention_override_and_reapplying_replaces(pack):
    """A user's own override (e.g. a sage/flash patch) still runs, with the boosted queries; a second TMA on
    the same model replaces the first instead of multiplying α twice."""
    boost_mod = pack("samplers.attention_boost")
    model = load_wan("wan2.1_t2v_1.3B_fp16.safetensors")
    seen = []

    def users_override(func, *args, **kwargs):
        seen.append(args[1].norm().item())
        return func(*args, **kwargs)
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = users_override
    first = boost_mod.apply_attention_boost(model, "wan", boost_mod.BoostSchedule(factors=lambda u: (2.0, 1.0)))
    second = boost_mod.apply_attention_boost(first, "wan", boost_mod.BoostSchedule(factors=lambda u: (1.5, 1.0)))
    block = model.model.diffusion_model.blocks[0].cross_attn
    forward = second.object_patches["diffusion_model.blocks.0.cross_attn.forward"]
    options = {"optimized_attention_override":
               second.model_options["transformer_options"]["optimized_attention_override"],
               boost_mod.STATE_KEY: boost_mod.Boost(text=1.5, image=1.0)}
    torch.manual_seed(5)
    x, ctx = torch.randn(1, 12, 128), torch.randn(1, 6, 128)
    with torch.no_grad():
        got = forward(x, ctx, transformer_options=options)
        want = wan_cross_reference(block, x, ctx, 1.5)
        k_norm = block.norm_k(block.k(ctx)).norm().item()
    assert (got - want).abs().max() <= TOL
    assert seen == [pytest.approx(1.5 * k_norm, rel=1e-5)]  # called once, with text keys × 1.5 (not × 3)


def test_wraps_a_cross_attention_forward_patch_another_pack_installed(pack):
    """Another pack's object patch on cross_attn.forward keeps running inside ours."""
    boost_mod = pack("samplers.attention_boost")
    model = load_wan("wan2.1_t2v_1.3B_fp16.safetensors")
    block = model.model.diffusion_model.blocks[0].cross_attn
    calls = []

    def other_pack_forward(x, context, *args, **kwargs):
        calls.append(kwargs["transformer_options"].get(boost_mod.CROSS_TAG_KEY) is not None)
        return type(block).forward(block, x, context, *args, **kwargs) * 2.0
    model.add_object_patch("diffusion_model.blocks.0.cross_attn.forward", other_pack_forward)
    m, options = patched(pack, model, "wan", 1.3, 1.0)
    torch.manual_seed(6)
    x, ctx = torch.randn(1, 8, 128), torch.randn(1, 5, 128)
    with torch.no_grad():
        got = m.object_patches["diffusion_model.blocks.0.cross_attn.forward"](x, ctx, transformer_options=options)
        want = wan_cross_reference(block, x, ctx, 1.3) * 2.0
    assert calls == [True] and (got - want).abs().max() <= TOL
