"""The UniMMVSR forward on a Wan backbone (UniMMVSR §3.2; docs/design.md §2) — the one implementation that sampling
(samplers/unimmvsr_model.py, as a ComfyUI DIFFUSION_MODEL wrapper) and training (the trainer) both call.

It works on a plain ComfyUI ``WanModel`` module (duck-typed: ``patch_size``, ``time_embedding``, ``rope_encode``,
``forward_orig``; nothing here imports ComfyUI) plus the augmentation embedding:
- LR video by channel concatenation: ``x`` arrives as [B, 2·C, T, H, W] = noisy latent ‖ LR condition (ComfyUI's
  ``c_concat`` path in sampling, a ``torch.cat`` in training); ``patch_embedding`` takes both.
- Augmentation micro-condition: the embedding of t_aug is added to the timestep embedding for this call only.
- Reference tokens: the reference latents are appended as extra latent frames (their LR channels zero), given
  their own temporal RoPE ranges (reference_layout) with the normal spatial grid, so every block's 3D
  self-attention sees target and references as one bidirectional sequence; their frames are cut off the output.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .reference_layout import ID_IMAGE, REFERENCE_VIDEO, ReferenceLayout, layout


@dataclass
class ReferenceTokens:
    latent: torch.Tensor          # [1 or B, C, R, h, w] in the model's latent space
    layout: ReferenceLayout


def reference_tokens(references, target_frames: int, id_start: int, video_start: int,
                     to_model_space: Callable[[torch.Tensor], torch.Tensor]) -> ReferenceTokens | None:
    """The reference tokens of a window of ``target_frames`` latent frames: ID images first, then reference
    videos (each ``(category, raw VAE latent [1, C, k, h, w])``), normalised into the model's latent space and laid
    out on their separated RoPE ranges. None when there are no references."""
    refs = list(references or [])
    if not refs:
        return None
    ids = [lat for cat, lat in refs if cat == ID_IMAGE]
    videos = [lat for cat, lat in refs if cat == REFERENCE_VIDEO]
    if len(ids) + len(videos) != len(refs):
        raise ValueError(f"unknown reference categories: {sorted({c for c, _ in refs} - {ID_IMAGE, REFERENCE_VIDEO})}")
    lay = layout(target_frames, [x.shape[2] for x in ids], [x.shape[2] for x in videos], id_start, video_start)
    return ReferenceTokens(latent=torch.cat([to_model_space(x) for x in ids + videos], dim=2), layout=lay)


def pad_to_patch(x: torch.Tensor, patch_size) -> torch.Tensor:
    """Circular padding of T, H, W up to multiples of the patch size (what ComfyUI's Wan does)."""
    pads = []
    for dim, p in zip((4, 3, 2), tuple(patch_size)[::-1]):
        pads += [0, (p - x.shape[dim] % p) % p]
    return F.pad(x, pads, mode="circular") if any(pads) else x


@contextlib.contextmanager
def time_embedding_plus(wan, add: torch.Tensor | None):
    """Within the block, ``wan.time_embedding(·)`` returns its usual output + ``add`` ([B, dim], broadcast over the
    per-token rows Wan 2.2 makes). Whatever forward was installed before (e.g. another pack's patch) still runs."""
    if add is None:
        yield
        return
    module = wan.time_embedding
    previous = module.__dict__.get("forward")
    inner = previous if previous is not None else type(module).forward.__get__(module)

    def forward(x):
        out = inner(x)
        a = add
        if out.shape[0] != a.shape[0]:
            a = a.repeat_interleave(out.shape[0] // a.shape[0], dim=0)
        return out + a.to(out.dtype)

    module.forward = forward
    try:
        yield
    finally:
        if previous is None:
            del module.forward
        else:
            module.forward = previous


def reference_freqs(wan, target_frames: int, h: int, w: int, layout: ReferenceLayout, device, dtype):
    """RoPE frequencies of the joint sequence: the target grid, then each reference's own temporal range.
    ``target_frames``, ``h``, ``w`` are latent sizes (Wan's rope_encode divides by the patch size itself)."""
    parts = [wan.rope_encode(target_frames, h, w, device=device, dtype=dtype)]
    for span in layout.spans:
        parts.append(wan.rope_encode(span.frames, h, w, t_start=span.start, device=device, dtype=dtype))
    return torch.cat(parts, dim=1)


def with_references(wan, x: torch.Tensor, timestep, context, refs: ReferenceTokens, **kwargs) -> torch.Tensor:
    """The backbone on target ‖ reference frames with separated temporal RoPE; the output keeps the target only."""
    bs, c, t, h, w = x.shape
    x = pad_to_patch(x, wan.patch_size)
    ref = pad_to_patch(refs.latent.to(device=x.device, dtype=x.dtype), wan.patch_size)
    if ref.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"reference latents are {ref.shape[-1]}×{ref.shape[-2]} but the window is "
                         f"{x.shape[-1]}×{x.shape[-2]}: encode the references at the window's size")
    if ref.shape[0] not in (1, bs):
        raise ValueError(f"{ref.shape[0]} reference batches for {bs} samples")
    ref = ref.expand(bs, -1, -1, -1, -1)
    lr_zeros = torch.zeros(bs, c - ref.shape[1], *ref.shape[2:], device=x.device, dtype=x.dtype)
    joint = torch.cat([x, torch.cat([ref, lr_zeros], dim=1)], dim=2)
    freqs = reference_freqs(wan, x.shape[2], x.shape[3], x.shape[4], refs.layout, x.device, x.dtype)
    out = wan.forward_orig(joint, timestep, context, freqs=freqs, **kwargs)
    return out[:, :, :t, :h, :w]


def unimmvsr_forward(wan, aug_embedding, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, *,
                     aug_t, references: ReferenceTokens | None = None,
                     run_plain: Callable | None = None, **kwargs) -> torch.Tensor:
    """The upscaler's prediction (the backbone's own output convention: ComfyUI Wan predicts ε − x0).

    x: [B, 2·C, T, H, W] noisy latent ‖ LR condition (model space); timestep: the backbone's timestep (σ·1000 for
    Wan), [B]; context: text embeddings; aug_t: augmentation timestep(s), a number or [B]; references: or None.
    run_plain(x, timestep, context, **kwargs) runs the backbone when there are no references (sampling passes the
    wrapper chain so other packs' wrappers still run; default: ``wan._forward``). Extra ``kwargs`` (e.g.
    ``transformer_options``) go to the backbone."""
    aug = torch.as_tensor(aug_t, dtype=torch.float32, device=x.device).flatten()
    if aug.numel() == 1:
        aug = aug.expand(x.shape[0])
    if aug.numel() != x.shape[0]:
        raise ValueError(f"{aug.numel()} augmentation timesteps for a batch of {x.shape[0]}")
    add = aug_embedding(aug)
    with time_embedding_plus(wan, add):
        if references is not None:
            return with_references(wan, x, timestep, context, references, **kwargs)
        if run_plain is None:
            return wan._forward(x, timestep, context, **kwargs)
        return run_plain(x, timestep, context, **kwargs)
