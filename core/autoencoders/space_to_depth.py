"""A lossless space-to-depth video autoencoder (docs/design.md §7: the trained demo's autoencoder).

Encode: each frame's f×f pixel blocks become channels (pixel unshuffle), in the VAE input range [−1, 1]:
[T, H, W, 3] in [0, 1] → [1, 3·f², T, H/f, W/f]; decode is the exact inverse (pixel shuffle). No temporal
compression. With f = 4 the latent has 48 channels — a Wan-2.2-layout DiT (patch 1×2×2) then sees one token per
8×8 pixels. It has no weights and reconstructs exactly (up to float rounding), so an upscaler trained in its space
is judged on what the DiT does, not on a decoder's ceiling.

The class speaks ComfyUI's VAE interface (IMAGE [T, H, W, C] in, latent [B, C, T, h, w] out; compression factors;
tiled variants) so core VAEDecode/VAEEncode and the pack's nodes use it like any video VAE; nothing here imports
ComfyUI.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class SpaceToDepthVAE:
    latent_dim = 3
    output_channels = 3

    def __init__(self, factor: int = 4):
        if factor < 1:
            raise ValueError(f"space-to-depth factor {factor} must be ≥ 1")
        self.factor = int(factor)
        self.latent_channels = 3 * self.factor ** 2
        self.downscale_ratio = self.upscale_ratio = self.factor

    # -- ComfyUI's VAE interface --------------------------------------------------------------------
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[T, H, W, C≥3] in [0, 1] (a video as a batch of frames) → [1, 3·f², T, H/f, W/f]."""
        if pixels.ndim == 5:  # [B, T, H, W, C]
            return torch.cat([self.encode(p) for p in pixels], dim=0)
        if pixels.ndim != 4:
            raise ValueError(f"expected IMAGE frames [T, H, W, C], got {tuple(pixels.shape)}")
        t, h, w, _ = pixels.shape
        f = self.factor
        if h % f or w % f:
            raise ValueError(f"frames of {w}×{h} are not a multiple of the space-to-depth factor {f}")
        x = pixels[..., :3].float().movedim(-1, 1) * 2.0 - 1.0          # [T, 3, H, W] in [−1, 1]
        return F.pixel_unshuffle(x, f).movedim(0, 1).unsqueeze(0)         # [1, 3f², T, H/f, W/f]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, 3·f², T, h, w] → [B, T, h·f, w·f, 3] in [0, 1]."""
        if latent.ndim != 5 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"expected a latent [B, {self.latent_channels}, T, h, w], got {tuple(latent.shape)}")
        b, c, t = latent.shape[:3]
        x = latent.float().movedim(1, 2).reshape(b * t, c, *latent.shape[-2:])
        x = F.pixel_shuffle(x, self.factor)
        return ((x + 1.0) / 2.0).clamp(0, 1).reshape(b, t, 3, *x.shape[-2:]).movedim(2, -1)

    def encode_tiled(self, pixels, *args, **kwargs):   # linear memory already: no tiles needed
        return self.encode(pixels)

    def decode_tiled(self, latent, *args, **kwargs):
        return self.decode(latent)

    def spacial_compression_encode(self) -> int:
        return self.factor

    def spacial_compression_decode(self) -> int:
        return self.factor

    def temporal_compression_decode(self):
        return None

    def temporal_compression_encode(self):
        return None


DIHEDRAL_OPS = ("hflip", "vflip", "transpose")


def dihedral_latent(latent: torch.Tensor, op: str, factor: int) -> torch.Tensor:
    """The exact latent counterpart of a pixel flip or transposition: ``decode(dihedral_latent(encode(x), op))`` equals
    ``x`` flipped (hflip: width, vflip: height) or transposed. A latent channel c·f² + i·f + j holds pixel (i, j) of
    its cell, so the cells move like pixels and the offsets inside a cell move with them. [B, 3·f², T, h, w]."""
    if op not in DIHEDRAL_OPS:
        raise ValueError(f"unknown latent transform {op!r} (one of {', '.join(DIHEDRAL_OPS)})")
    b, c, t, h, w = latent.shape
    if c % (factor * factor):
        raise ValueError(f"a latent of {c} channels is not a space-to-depth latent of factor {factor}")
    x = latent.reshape(b, c // (factor * factor), factor, factor, t, h, w)   # [B, 3, i, j, T, h, w]
    if op == "hflip":
        x = x.flip(3, 6)
    elif op == "vflip":
        x = x.flip(2, 5)
    else:
        x = x.transpose(2, 3).transpose(5, 6)
    return x.reshape(b, c, t, *x.shape[-2:]).contiguous()
