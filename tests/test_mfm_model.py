"""The MfM transformer (core/mfm/transformer.py) against the official names and plain-math references written
here (docs/design.md §8): 3D RoPE with interleaved pairs, QK RMSNorm over the full width, AdaLN chunk order, the text
padding bias, unpatchify order, the adapter added to the patch embedding — and a whole forward recomputed
independently."""
import math

import pytest
import torch
import torch.nn.functional as F

from core.mfm.rope import apply_rope, rope_tables
from core.mfm.transformer import MfMTransformer3D

pytestmark = pytest.mark.host_independent   # never reaches ComfyUI's code: `make test-floor` leaves it out

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, num_layers=2,
            cross_attention_dim=24, patch_size=2, use_rope=True, add_motion_score=True, use_depth_cond=True,
            activation_fn="gelu-approximate", norm_type="ada_norm_zero", adaln_norm_type="legacy")

# the official module tree (transformer_3d.py, goku_modules.py, embeddings.py, light_adapter.py), by name
TOP = ["pos_embed.proj.weight", "pos_embed.proj.bias",
       "time_embedder.timestep_embedder.linear_1.weight", "time_embedder.timestep_embedder.linear_1.bias",
       "time_embedder.timestep_embedder.linear_2.weight", "time_embedder.timestep_embedder.linear_2.bias",
       "time_embedder.guidance_embedder.linear_1.weight", "time_embedder.guidance_embedder.linear_1.bias",
       "time_embedder.guidance_embedder.linear_2.weight", "time_embedder.guidance_embedder.linear_2.bias",
       "proj_out_1.weight", "proj_out_1.bias", "proj_out_2.weight", "proj_out_2.bias",
       "cond_conv.conv_in.weight", "cond_conv.conv_in.bias", "cond_conv.conv_out.weight", "cond_conv.conv_out.bias"] \
    + [f"cond_conv.blocks.{i}.{p}" for i in range(8) for p in ("weight", "bias")]
BLOCK = ["norm1.linear.weight", "norm1.linear.bias", "norm2.weight", "norm3.weight", "ff.fc1.weight", "ff.fc1.bias",
         "ff.fc2.weight", "ff.fc2.bias"] + [f"attn{a}.{n}.weight" for a in (1, 2)
                                             for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")]


def seeded(chunks=1, seed=0, **kw):
    torch.manual_seed(seed)
    model = MfMTransformer3D(**{**TINY, "num_block_chunks": chunks, **kw}).eval()
    with torch.no_grad():  # DiT inits zero nothing here; make every parameter matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("chunks", [1, 2])
def test_state_dict_names_are_the_official_ones(chunks):
    prefixes = [f"transformer_blocks.{i}." for i in range(2)] if chunks == 1 else \
        [f"transformer_blocks.{i}.module.0." for i in range(2)]
    expected = set(TOP) | {p + k for p in prefixes for k in BLOCK}
    assert set(seeded(chunks).state_dict()) == expected


def test_chunked_and_plain_layouts_compute_the_same():
    plain, chunked = seeded(1), seeded(2)
    rename = {f"transformer_blocks.{i}.": f"transformer_blocks.{i}.module.0." for i in range(2)}
    sd = {}
    for k, v in plain.state_dict().items():
        for a, b in rename.items():
            if k.startswith(a):
                k = b + k[len(a):]
        sd[k] = v
    chunked.load_state_dict(sd)
    x, t, ctx, mask, cond, motion = inputs()
    assert torch.equal(plain(x, t, ctx, mask, cond, motion), chunked(x, t, ctx, mask, cond, motion))


def test_rope_interleaved_pairs_quarter_and_three_eighths_split_theta_10000():
    head_dim, grid = 32, (3, 2, 4)
    cos, sin = rope_tables(grid, head_dim)
    x = torch.randn(1, 1, 24, head_dim, dtype=torch.float64)
    got = apply_rope(x, cos.double(), sin.double())
    want = torch.empty_like(x)
    dims = [8, 12, 12]                                       # 1/4, 3/8, 3/8 of 32
    for s in range(24):
        pos = (s // 8, (s // 4) % 2, s % 4)                  # t-major, then row, then column
        offset = 0
        for axis, d in enumerate(dims):
            for i in range(d // 2):                          # pair (2i, 2i+1) of this axis' slice
                angle = pos[axis] * 10000.0 ** (-2 * i / d)
                z = complex(x[0, 0, s, offset + 2 * i], x[0, 0, s, offset + 2 * i + 1]) * complex(math.cos(angle),
                                                                                                   math.sin(angle))
                want[0, 0, s, offset + 2 * i], want[0, 0, s, offset + 2 * i + 1] = z.real, z.imag
            offset += d
    assert torch.allclose(got, want, atol=1e-6)


def test_qk_rmsnorm_over_the_full_width_before_the_head_split():
    attn = seeded().blocks()[0].attn1
    x = torch.randn(2, 5, 32)
    q, k, _ = attn.qkv(x, None)
    for got, proj, norm in ((q, attn.q_proj, attn.q_norm), (k, attn.k_proj, attn.k_norm)):
        y = x @ proj.weight.T
        y = y / torch.sqrt((y ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight   # all 32 channels at once
        assert torch.allclose(got, y.reshape(2, 5, 2, 16), atol=1e-6)            # [B, S, H, Dh]
        per_head = y.reshape(2, 5, 2, 16)
        per_head = per_head / torch.sqrt((per_head ** 2).mean(-1, keepdim=True) + 1e-6)  # the wrong way
        assert not torch.allclose(got, per_head, atol=1e-3)


def inputs(b=2, t=2, h=4, w=6, text=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, t, h, w, generator=g)
    timestep = torch.tensor([700.0, 250.0][:b])
    ctx = torch.randn(b, text, 24, generator=g)
    mask = torch.ones(b, text)
    mask[:, 5:] = 0
    cond = torch.randn(b, 5, 4 * (t - 1) + 1, 8 * h, 8 * w, generator=g) * 0.5
    motion = torch.tensor([5.0, 1.0][:b])
    return x, timestep, ctx, mask, cond, motion


def reference_forward(sd, x, timestep, ctx, mask, cond_out, motion, heads=2, head_dim=16, p=2, layers=2):
    """The MfM forward in plain tensor math, reading weights by their official names. ``cond_out`` is the light
    adapter's output (checked separately in test_mfm_condition.py)."""
    b, c, t, h, w = x.shape
    dim = heads * head_dim

    def lin(name, v):
        out = v @ sd[name + ".weight"].T
        return out + sd[name + ".bias"] if name + ".bias" in sd else out

    def rms(name, v):
        return v / torch.sqrt((v ** 2).mean(-1, keepdim=True) + 1e-6) * sd[name + ".weight"]

    def ln(v):
        return (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-6)

    def sinus(v):
        k = torch.arange(128, dtype=torch.float32)
        a = v[:, None] * torch.exp(-math.log(10000.0) * k / 127)[None]
        return torch.cat([a.cos(), a.sin()], -1)

    def mlp(prefix, v):
        return lin(prefix + ".linear_2", F.silu(lin(prefix + ".linear_1", v)))

    # patches: per frame, each p×p patch's C·p·p values through the conv weight
    patches = x.reshape(b, c, t, h // p, p, w // p, p).permute(0, 2, 3, 5, 1, 4, 6).reshape(b, t, h // p, w // p, -1)
    tok = patches @ sd["pos_embed.proj.weight"].reshape(dim, -1).T + sd["pos_embed.proj.bias"]
    tok = tok + cond_out.permute(0, 2, 3, 4, 1)
    n = t * (h // p) * (w // p)
    tok = tok.reshape(b, n, dim)
    cvec = mlp("time_embedder.timestep_embedder", sinus(timestep)) + \
        mlp("time_embedder.guidance_embedder", sinus(motion))
    # rope: positions and frequencies written out again
    pos = [(s // ((h // p) * (w // p)), (s // (w // p)) % (h // p), s % (w // p)) for s in range(n)]
    dims = [head_dim // 4, head_dim * 3 // 8, head_dim * 3 // 8]

    def rotate(v):  # v [b, heads, n, head_dim]
        out = v.clone()
        for s in range(n):
            off = 0
            for axis, d in enumerate(dims):
                i = torch.arange(d // 2, dtype=torch.float32)
                ang = pos[s][axis] / 10000.0 ** (2 * i / d)
                a, bb = v[..., s, off:off + d:2], v[..., s, off + 1:off + d:2]
                out[..., s, off:off + d:2] = a * ang.cos() - bb * ang.sin()
                out[..., s, off + 1:off + d:2] = a * ang.sin() + bb * ang.cos()
                off += d
        return out

    def attention(prefix, q_in, kv_in, bias, rotate_k):
        q = rms(prefix + ".q_norm", lin(prefix + ".q_proj", q_in))
        k = rms(prefix + ".k_norm", lin(prefix + ".k_proj", kv_in))
        v = lin(prefix + ".v_proj", kv_in)
        q, k, v = (z.reshape(b, -1, heads, head_dim).transpose(1, 2) for z in (q, k, v))
        q = rotate(q)
        if rotate_k:
            k = rotate(k)
        logits = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        if bias is not None:
            logits = logits + bias
        out = logits.softmax(-1) @ v
        return lin(prefix + ".o_proj", out.transpose(1, 2).reshape(b, -1, dim))

    text_bias = (1 - mask)[:, None, None, :] * -10000.0
    for i in range(layers):
        pre = f"transformer_blocks.{i}"
        m = lin(pre + ".norm1.linear", F.silu(cvec))
        sh_a, sc_a, g_a, sh_m, sc_m, g_m = (m[:, j * dim:(j + 1) * dim][:, None] for j in range(6))
        tok = tok + g_a * attention(pre + ".attn1", ln(tok) * (1 + sc_a) + sh_a, ln(tok) * (1 + sc_a) + sh_a,
                                    None, True)
        tok = tok + attention(pre + ".attn2", rms(pre + ".norm2", tok), ctx, text_bias, False)
        z = rms(pre + ".norm3", tok) * (1 + sc_m) + sh_m
        tok = tok + g_m * lin(pre + ".ff.fc2", F.gelu(lin(pre + ".ff.fc1", z), approximate="tanh"))
    mo = lin("proj_out_1", F.silu(cvec))
    shift, scale = mo[:, :dim][:, None], mo[:, dim:][:, None]
    y = lin("proj_out_2", ln(tok) * (1 + scale) + shift)             # [b, n, p·p·C] as (p_row, p_col, C)
    out = torch.empty(b, c, t, h, w)
    for s in range(n):
        ft, fy, fx = pos[s]
        for i in range(p):
            for j in range(p):
                out[:, :, ft, fy * p + i, fx * p + j] = y[:, s, (i * p + j) * c:(i * p + j + 1) * c]
    return out


def test_whole_forward_equals_the_plain_math_reference():
    model = seeded()
    x, t, ctx, mask, cond, motion = inputs()
    with torch.no_grad():
        got = model(x, t, ctx, mask, cond, motion)
        want = reference_forward(model.state_dict(), x, t, ctx, mask, model.cond_conv(cond), motion)
    assert got.shape == x.shape
    assert torch.allclose(got, want, atol=2e-5), float((got - want).abs().max())


def test_text_padding_is_masked_and_the_adapter_is_added_to_the_patch_embedding():
    model = seeded()
    x, t, ctx, mask, cond, motion = inputs()
    with torch.no_grad():
        base = model(x, t, ctx, mask, cond, motion)
        noisy_pad = ctx.clone()
        noisy_pad[:, 5:] = torch.randn_like(noisy_pad[:, 5:]) * 10
        assert torch.allclose(model(x, t, noisy_pad, mask, cond, motion), base, atol=1e-6)   # −10000 bias
        assert not torch.allclose(model(x, t, noisy_pad, None, cond, motion), base, atol=1e-3)  # no mask: it counts
        # the adapter's output is added to the patch-embedded tokens (the reference adds it there), and even an
        # all-zero condition contributes through the adapter's biases
        zero_cond = torch.zeros_like(cond)
        adapter_out = model.cond_conv(zero_cond)
        assert adapter_out.abs().max() > 0
        with_zero = model(x, t, ctx, mask, zero_cond, motion)
        want = reference_forward(model.state_dict(), x, t, ctx, mask, adapter_out, motion)
        assert torch.allclose(with_zero, want, atol=2e-5)
        skipped = reference_forward(model.state_dict(), x, t, ctx, mask, torch.zeros_like(adapter_out), motion)
        assert not torch.allclose(with_zero, skipped, atol=1e-3)
        # no condition at all = the all-zero condition (t2v)
        assert torch.equal(model(x, t, ctx, mask, None, motion), with_zero)


def test_adaln_chunk_order_shift_scale_gate():
    """Only gate_msa non-zero (chunk 2) → the attention branch alone changes the tokens; only shift_mlp (chunk 3)
    → nothing changes (its gate, chunk 5, is zero)."""
    block = seeded().blocks()[0]
    dim = 32
    x, c = torch.randn(1, 6, dim), torch.randn(1, dim)
    ctx = torch.randn(1, 3, 24)
    with torch.no_grad():
        for active, changes in ((3, False), (2, True), (5, True)):
            block.norm1.linear.weight.zero_()
            bias = torch.zeros(6 * dim)
            bias[active * dim:(active + 1) * dim] = 1.0
            block.norm1.linear.bias.copy_(bias)
            block.attn2.o_proj.weight.zero_()                   # cross-attention silenced: its branch is ungated
            out = block(x, c, ctx, None, None)
            assert (not torch.allclose(out, x, atol=1e-6)) == changes, active


def test_bad_configs_and_inputs_are_refused_by_name():
    with pytest.raises(ValueError, match="activation_fn"):
        MfMTransformer3D(**{**TINY, "activation_fn": "geglu"})
    with pytest.raises(ValueError, match="num_block_chunks"):
        MfMTransformer3D(**{**TINY, "num_block_chunks": 3})
    model = seeded()
    x, t, ctx, mask, cond, motion = inputs()
    with pytest.raises(ValueError, match="token grid"):
        model(x, t, ctx, mask, cond[:, :, :1], motion)
    with pytest.raises(ValueError, match="channels"):
        model(x, t, ctx, mask, cond[:, :4], motion)
