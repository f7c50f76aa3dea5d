"""Scaling pre-softmax attention logits on a subset of keys without a special kernel (UniVid §2.3, TACA).

Every function takes the attention function to run (SDPA, flash, sage, xformers: whatever the host chose) and
changes only its inputs, so the fast path is kept.

- Cross-attention whose keys are all of one modality (Wan's text cross-attention, or its CLIP-image branch):
  ``α·(q·kᵀ)/√d == (q·(α·k)ᵀ)/√d``, so scaling the keys (after their norm and RoPE) by α scales exactly those
  logits — a few hundred text keys, far cheaper than the video queries.
- Joint attention (MM-DiT, e.g. Flux), where one sequence holds text and image tokens: only image-query ×
  text-key logits are scaled. Text queries are run unchanged; image queries are run against keys whose text
  part is multiplied by α. Two calls over the same keys and values, the same number of query rows in total,
  so the FLOPs are those of one unpatched call.
"""
from __future__ import annotations

from typing import Callable

import torch


def scale_all_logits(attention: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha: float,
                     *args, **kwargs) -> torch.Tensor:
    """Run ``attention`` with every logit multiplied by ``alpha`` (keys scaled; α = 1 is untouched)."""
    if alpha != 1.0:
        k = k * alpha
    return attention(q, k, v, *args, **kwargs)


def scale_image_to_text_logits(attention: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               alpha: float, n_text: int, text_first: bool = True, heads_first: bool = False,
                               mask: torch.Tensor | None = None, output_heads_first: bool = False,
                               **kwargs) -> torch.Tensor:
    """Joint attention with image-query × text-key logits multiplied by ``alpha``.

    ``q, k, v`` hold ``n_text`` text tokens at the start (``text_first``) or the end of the sequence axis, which
    is dim 2 when ``heads_first`` ([B, H, S, D]) and dim 1 otherwise ([B, S, H·D]). ``mask`` (additive or
    boolean, broadcastable to [..., S_q, S_k]) is split along its query axis. ``output_heads_first`` tells how
    ``attention`` lays out its result ([B, H, S, D] or [B, S, H·D]) so the two halves are joined on the right
    axis. Other keyword arguments go to ``attention`` unchanged.
    """
    if alpha == 1.0:
        return attention(q, k, v, mask=mask, **kwargs)
    seq_dim = 2 if heads_first else 1
    seq = q.shape[seq_dim]
    if not 0 < n_text < seq:
        raise ValueError(f"joint attention with {seq} tokens cannot hold {n_text} text tokens")
    text_slice = slice(0, n_text) if text_first else slice(seq - n_text, seq)
    image_slice = slice(n_text, seq) if text_first else slice(0, seq - n_text)

    def take(t: torch.Tensor, s: slice, dim: int) -> torch.Tensor:
        # contiguous: some host kernels (ComfyUI's CPU sub-quadratic attention) return NaN on narrowed views
        return t.narrow(dim, s.start, s.stop - s.start).contiguous()

    def mask_rows(s: slice):
        if mask is None or mask.ndim < 2 or mask.shape[-2] == 1:
            return mask
        return take(mask, s, mask.ndim - 2)

    k_text = take(k, text_slice, seq_dim) * alpha
    k_image = take(k, image_slice, seq_dim)
    k_scaled = torch.cat((k_text, k_image) if text_first else (k_image, k_text), dim=seq_dim)
    out_text = attention(take(q, text_slice, seq_dim), k, v, mask=mask_rows(text_slice), **kwargs)
    out_image = attention(take(q, image_slice, seq_dim), k_scaled, v, mask=mask_rows(image_slice), **kwargs)
    out_dim = 2 if output_heads_first else 1
    parts = (out_text, out_image) if text_first else (out_image, out_text)
    return torch.cat(parts, dim=out_dim)
