"""The MfM video DiT (MfM §3; official ``transformer_3d.py``, ``goku_modules.py``, ``embeddings.py``,
``normalization.py``; docs/design.md §8). Plain PyTorch with the official state-dict names, sized from the pipeline's
``transformer/config.json``; ``operations`` lets a host supply its own Linear/Conv/LayerNorm (ComfyUI's casting
and offloading ops) — torch.nn by default.

Forward (velocity v ≈ ε − x₀ of the flow x_σ = (1 − σ)·x₀ + σ·ε, timestep = σ·1000):
1. patch embedding ``pos_embed.proj`` (2D conv, stride p, per frame) plus the light adapter's output on the same
   token grid (``cond_conv``; it runs even for an all-zero condition — its biases matter);
2. c = MLP(sinusoid(t)) + MLP(sinusoid(motion score)) (256-channel sinusoid, cos first, frequency shift 1);
3. blocks: AdaLN-zero self-attention (chunks shift, scale, gate for attention then for the MLP), then RMSNorm →
   cross-attention to the T5 text (no modulation, no gate; padding as a −10000 bias), then the modulated, gated
   GELU-tanh MLP. Both attentions RMS-normalise q and k over the full width before the head split; self-attention
   rotates q and k, cross-attention only q (as the official code does);
4. final AdaLN (shift first), ``proj_out_2``, unpatchify with features laid out (p_row, p_col, C).
With ``num_block_chunks`` K > 1 the blocks are stored as ``transformer_blocks.<chunk>.module.<j>``.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .adapter import LightAdapter
from .rope import rope_tables, rotate, rotations

TEXT_PAD_BIAS = -10000.0
FREQ_CHANNELS = 256
NORM_EPS = 1e-6

SUPPORTED = {"activation_fn": ("gelu-approximate",), "norm_type": ("ada_norm_zero", "ada_norm_zero_nolabel"),
             "condition_type": ("inpaint_mask",), "adaln_norm_type": ("legacy", "layernorm", "rmsnorm")}


def timestep_sinusoid(values: torch.Tensor, channels: int = FREQ_CHANNELS) -> torch.Tensor:
    """diffusers' Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=1): [cos, sin] of v·f_k,
    f_k = exp(−ln(10000)·k / (channels/2 − 1)), in fp32."""
    half = channels // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=values.device) / (half - 1))
    angle = values.float()[:, None] * freqs[None]
    return torch.cat([angle.cos(), angle.sin()], dim=-1)


class RMSNorm(nn.Module):
    """weight · x / rms(x) computed in fp32, returned in the input's dtype (official ``normalization.RMSNorm``)."""

    def __init__(self, dim: int, eps: float = NORM_EPS, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.device, torch.float32)
        return F.rms_norm(x.float(), (x.shape[-1],), weight, self.eps).to(x.dtype)


class TimestepMLP(nn.Module):
    def __init__(self, dim: int, ops, device=None, dtype=None):
        super().__init__()
        self.linear_1 = ops.Linear(FREQ_CHANNELS, dim, device=device, dtype=dtype)
        self.linear_2 = ops.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, sinusoid: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(sinusoid)))


class ConditioningEmbedding(nn.Module):
    """``time_embedder``: c = timestep_embedder(sin(t)) [+ guidance_embedder(sin(motion score))]."""

    def __init__(self, dim: int, motion: bool, ops, device=None, dtype=None):
        super().__init__()
        self.timestep_embedder = TimestepMLP(dim, ops, device, dtype)
        self.guidance_embedder = TimestepMLP(dim, ops, device, dtype) if motion else None

    def forward(self, timestep: torch.Tensor, motion_score: torch.Tensor | None, dtype) -> torch.Tensor:
        c = self.timestep_embedder(timestep_sinusoid(timestep).to(dtype))
        if self.guidance_embedder is not None:
            if motion_score is None:
                motion_score = torch.zeros_like(timestep)
            c = c + self.guidance_embedder(timestep_sinusoid(motion_score.to(timestep.device)).to(dtype))
        return c


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int, ops, device=None, dtype=None):
        super().__init__()
        self.proj = ops.Conv2d(in_channels, dim, kernel_size=patch, stride=patch, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(rearrange(x, "b c t h w -> (b t) c h w"))    # each frame patchified on its own
        return rearrange(y, "(b t) d hp wp -> b d t hp wp", b=x.shape[0])


class AdaNormZero(nn.Module):
    """``norm1``: linear(SiLU(c)) → 6 chunks; LayerNorm without affine (or RMSNorm with weight), eps 1e-6."""

    def __init__(self, dim: int, rms: bool, ops, device=None, dtype=None):
        super().__init__()
        self.linear = ops.Linear(dim, 6 * dim, device=device, dtype=dtype)
        self.norm = RMSNorm(dim, device=device, dtype=dtype) if rms else \
            nn.LayerNorm(dim, elementwise_affine=False, eps=NORM_EPS)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, kv_dim: int, bias: bool, upcast: bool, ops,
                 device=None, dtype=None):
        super().__init__()
        self.heads, self.head_dim, self.upcast = heads, head_dim, upcast
        self.q_proj = ops.Linear(dim, dim, bias=bias, device=device, dtype=dtype)
        self.k_proj = ops.Linear(kv_dim, dim, bias=bias, device=device, dtype=dtype)
        self.v_proj = ops.Linear(kv_dim, dim, bias=bias, device=device, dtype=dtype)
        self.o_proj = ops.Linear(dim, dim, bias=bias, device=device, dtype=dtype)
        self.q_norm = RMSNorm(dim, device=device, dtype=dtype)
        self.k_norm = RMSNorm(dim, device=device, dtype=dtype)

    def qkv(self, x: torch.Tensor, context: torch.Tensor | None):
        """q, k, v as [B, S, H, Dh] (QK RMSNorm over the full width, then the head split)."""
        kv = x if context is None else context
        q, k, v = self.q_norm(self.q_proj(x)), self.k_norm(self.k_proj(kv)), self.v_proj(kv)
        split = lambda t: t.unflatten(-1, (self.heads, self.head_dim))  # noqa: E731
        return split(q), split(k), split(v)

    def forward(self, x, context=None, bias=None, rope=None, rotate_keys=True, attention=None):
        q, k, v = self.qkv(x, context)
        if rope is not None:   # rotations [S, Dh/2] broadcast over the heads of the still-contiguous [B, S, H, Dh]
            q = rotate(q, rope[:, None])
            if rotate_keys:
                k = rotate(k, rope[:, None])
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        dtype = q.dtype
        if self.upcast:
            q, k, v = q.float(), k.float(), v.float()
            bias = None if bias is None else bias.float()
        out = (attention or sdpa)(q, k, v, bias, context is not None)
        return self.o_proj(out.transpose(1, 2).flatten(2).to(dtype))


def sdpa(q, k, v, bias, cross: bool = False):
    """Attention of [B, H, S, Dh] tensors with an additive bias (or None), scale 1/√Dh. A host may pass its own
    function of the same signature (``attention=``); ``cross`` tells it the keys are text."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if bias is None else bias.to(q.dtype))


class FeedForward(nn.Module):
    def __init__(self, dim: int, ops, device=None, dtype=None):
        super().__init__()
        self.fc1 = ops.Linear(dim, 4 * dim, device=device, dtype=dtype)
        self.fc2 = ops.Linear(4 * dim, dim, device=device, dtype=dtype)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TransformerBlock(nn.Module):
    def __init__(self, dim, heads, head_dim, text_dim, bias, upcast, rms_adaln, ops, device=None, dtype=None):
        super().__init__()
        self.norm1 = AdaNormZero(dim, rms_adaln, ops, device, dtype)
        self.attn1 = Attention(dim, heads, head_dim, dim, bias, upcast, ops, device, dtype)
        self.norm2 = RMSNorm(dim, device=device, dtype=dtype)
        self.attn2 = Attention(dim, heads, head_dim, text_dim, bias, upcast, ops, device, dtype)
        self.norm3 = RMSNorm(dim, device=device, dtype=dtype)
        self.ff = FeedForward(dim, ops, device, dtype)

    def forward(self, x, c, text, text_bias, rope, attention=None):
        dtype = x.dtype
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.norm1.linear(F.silu(c)).float().chunk(6, dim=-1)
        # modulate: norm·(1 + scale) + shift; gated residual: x + gate·out (fp32, one fused op each)
        a = torch.addcmul(shift_msa[:, None], self.norm1.norm(x).float(), 1 + scale_msa[:, None]).to(dtype)
        x = x + (gate_msa[:, None] * self.attn1(a, rope=rope, attention=attention).float()).to(dtype)
        x = x + self.attn2(self.norm2(x), context=text, bias=text_bias, rope=rope, rotate_keys=False,
                           attention=attention)
        g = torch.addcmul(shift_mlp[:, None], self.norm3(x).float(), 1 + scale_mlp[:, None]).to(dtype)
        return x + (gate_mlp[:, None] * self.ff(g).float()).to(dtype)


class BlockChunk(nn.Module):
    """One of ``num_block_chunks`` groups of blocks (state-dict ``transformer_blocks.<c>.module.<j>``)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


class MfMTransformer3D(nn.Module):
    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88, in_channels: int | None = None,
                 out_channels: int | None = None, num_layers: int = 1, cross_attention_dim: int | list = 4096,
                 attention_bias: bool = False, patch_size: int = 2, use_rope: bool = False,
                 add_motion_score: bool = False, use_depth_cond: bool = False, adaln_norm_type: str = "legacy",
                 num_block_chunks: int = 1, upcast_attention: bool = False, condition_type: str = "inpaint_mask",
                 activation_fn: str = "geglu", norm_type: str = "layer_norm", device=None, dtype=None,
                 operations=None, **_ignored):
        super().__init__()
        config = dict(activation_fn=activation_fn, norm_type=norm_type, condition_type=condition_type,
                      adaln_norm_type=adaln_norm_type)
        for key, allowed in SUPPORTED.items():
            if config[key] not in allowed:
                raise ValueError(f"transformer config: {key} = {config[key]!r} is not what MfM uses ({allowed})")
        if in_channels is None:
            raise ValueError("transformer config: in_channels is missing")
        if num_layers % max(1, num_block_chunks):
            raise ValueError(f"transformer config: num_layers {num_layers} is not divisible by num_block_chunks "
                             f"{num_block_chunks}")
        ops = operations or nn
        dim = num_attention_heads * attention_head_dim
        text_dim = cross_attention_dim[0] if isinstance(cross_attention_dim, (list, tuple)) else cross_attention_dim
        self.dim, self.heads, self.head_dim, self.patch = dim, num_attention_heads, attention_head_dim, patch_size
        self.dtype = dtype or torch.float32          # the inference dtype (what hosts such as ComfyUI read)
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.use_rope, self.use_depth = use_rope, use_depth_cond
        self.condition_channels = 5 if use_depth_cond else 4
        self.config = SimpleNamespace(num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
                                      num_layers=num_layers, num_block_chunks=num_block_chunks, text_dim=text_dim)
        self.cond_conv = LightAdapter(dim, in_channels=self.condition_channels, operations=operations, device=device,
                                      dtype=dtype)
        self.pos_embed = PatchEmbed(in_channels, dim, patch_size, ops, device, dtype)
        self.time_embedder = ConditioningEmbedding(dim, add_motion_score, ops, device, dtype)
        blocks = [TransformerBlock(dim, num_attention_heads, attention_head_dim, text_dim, attention_bias,
                                   upcast_attention, adaln_norm_type == "rmsnorm", ops, device, dtype)
                  for _ in range(num_layers)]
        if num_block_chunks > 1:
            n = num_layers // num_block_chunks
            self.transformer_blocks = nn.ModuleList(BlockChunk(blocks[i * n:(i + 1) * n])
                                                    for i in range(num_block_chunks))
        else:
            self.transformer_blocks = nn.ModuleList(blocks)
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=NORM_EPS)
        self.proj_out_1 = ops.Linear(dim, 2 * dim, device=device, dtype=dtype)
        self.proj_out_2 = ops.Linear(dim, patch_size * patch_size * self.out_channels, device=device, dtype=dtype)

    def blocks(self) -> list[TransformerBlock]:
        out = []
        for item in self.transformer_blocks:
            out.extend(item.module if isinstance(item, BlockChunk) else [item])
        return out

    def adapt(self, condition: torch.Tensor) -> torch.Tensor:
        """The light adapter's output on the token grid [B, D, T, h, w] for a condition [B, 5|4, F, H, W]."""
        if condition.shape[1] != self.condition_channels:
            raise ValueError(f"the MfM condition has {condition.shape[1]} channels; this model takes "
                             f"{self.condition_channels} (R, G, B{', depth' if self.use_depth else ''}, mask)")
        return self.cond_conv(condition)

    def condition_for(self, x: torch.Tensor) -> torch.Tensor:
        """The all-zero condition of a latent (t2v, t2i): [B, 5|4, 4(T−1)+1, 8h, 8w]."""
        b, _, t, h, w = x.shape
        return x.new_zeros(b, self.condition_channels, 4 * (t - 1) + 1, 8 * h, 8 * w)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                attention_mask: torch.Tensor | None = None, mfm_condition: torch.Tensor | None = None,
                motion_score: torch.Tensor | None = None, attention=None, adapter_output: torch.Tensor | None = None,
                **_kwargs) -> torch.Tensor:
        """x [B, C, T, h, w] latents, timestep [B] (σ·1000), context [B, L, text_dim] T5 features,
        attention_mask [B, L] (1 = token), mfm_condition [B, 5, F, 8h, 8w] (R, G, B, depth, mask).
        ``adapter_output``: ``self.adapt(condition)`` computed earlier (it does not depend on σ; hosts may cache it)."""
        b, _, t, h, w = x.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"MfM needs latent sizes divisible by the patch {p} (pixel sizes ÷ 16), got {h}×{w}")
        dtype = x.dtype
        adapted = self.adapt(self.condition_for(x) if mfm_condition is None else mfm_condition.to(dtype)) \
            if adapter_output is None else adapter_output
        patches = self.pos_embed(x)
        if adapted.shape[2:] != patches.shape[2:]:
            raise ValueError(f"the MfM condition maps to the token grid {tuple(adapted.shape[2:])}, the latent to "
                             f"{tuple(patches.shape[2:])}: make the latent from the condition builder's width, height "
                             f"and length")
        tokens = patches + adapted
        grid = (t, h // p, w // p)
        x = rearrange(tokens, "b d t hp wp -> b (t hp wp) d")
        c = self.time_embedder(timestep.to(x.device).float().expand(b), None if motion_score is None
                               else motion_score.to(x.device).float().flatten().expand(b), dtype)
        text_bias = None
        if attention_mask is not None:
            text_bias = ((1 - attention_mask.to(x.device, dtype)) * TEXT_PAD_BIAS)[:, None, None, :]
        rope = rotations(*rope_tables(grid, self.head_dim, device=x.device)) if self.use_rope else None
        text = context.to(dtype)
        for block in self.blocks():
            x = block(x, c, text, text_bias, rope, attention)
        shift, scale = self.proj_out_1(F.silu(c)).float().chunk(2, dim=-1)
        x = (self.norm_out(x).float() * (1 + scale[:, None]) + shift[:, None]).to(dtype)
        x = self.proj_out_2(x)
        # unpatchify: each token's features are (patch row, patch column, channel)
        return rearrange(x, "b (t hp wp) (p1 p2 c) -> b c t (hp p1) (wp p2)", t=t, hp=h // p, wp=w // p, p1=p, p2=p)
