"""The UniMMVSR checkpoint format on a Wan backbone (docs/design.md §5).

A safetensors file whose metadata holds ``unimmvsr_format = "1"`` and:
- ``unimmvsr_kind``: ``full`` (every weight) or ``delta`` (only what differs from the Wan T2V checkpoint named in
  ``unimmvsr_base``, a file of ComfyUI's ``diffusion_models`` folder);
- ``unimmvsr_backbone``: ``wan2.1`` (16 latent channels) or ``wan2.2`` (48);
- ``unimmvsr_id_start`` / ``unimmvsr_video_start``: the RoPE starts of ID images and reference videos;
- ``unimmvsr_shift``: the flow timestep shift to sample with (paper: 1.0, the default when absent — not the
  8.0 ComfyUI gives Wan T2V models).
Tensors: the Wan diffusion-model keys, with ``patch_embedding.weight`` taking 2·C input channels (noisy latent,
then the upsampled LR condition), plus ``unimmvsr.aug_embedding.{linear_1,linear_2}.{weight,bias}``.

``init_from_t2v`` makes the starting point of training: the parent's weights, zero weights for the LR input
channels and a zero-output augmentation embedding — an untrained upscaler equals its T2V parent.
"""
from __future__ import annotations

import torch

from .aug_embedding import AugmentationEmbedding
from .reference_layout import PAPER_ID_START, PAPER_VIDEO_START

FORMAT = "1"
PREFIX = "unimmvsr."
AUG_PREFIX = PREFIX + "aug_embedding."
BACKBONES = {"wan2.1": 16, "wan2.2": 48}
DEFAULT_SHIFT = 1.0  # UniMMVSR A.3: sampling timestep shift 1.0


class NotUniMMVSRError(ValueError):
    pass


def backbone_of(t2v: dict[str, torch.Tensor]) -> str:
    if "head.modulation" not in t2v or "patch_embedding.weight" not in t2v:
        raise NotUniMMVSRError("not a Wan diffusion model (no head.modulation / patch_embedding)")
    channels = t2v["patch_embedding.weight"].shape[1]
    for name, c in BACKBONES.items():
        if channels == c:
            return name
    raise NotUniMMVSRError(f"a Wan model with {channels} input channels is not a T2V backbone (16 or 48)")


def init_from_t2v(t2v: dict[str, torch.Tensor], seed: int = 0, id_start: int = PAPER_ID_START,
                  video_start: int = PAPER_VIDEO_START,
                  shift: float = DEFAULT_SHIFT) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    backbone = backbone_of(t2v)
    out = dict(t2v)
    w = t2v["patch_embedding.weight"]
    out["patch_embedding.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
    dim = t2v["head.modulation"].shape[-1]
    freq_dim = t2v["time_embedding.0.weight"].shape[1]
    torch.manual_seed(seed)
    aug = AugmentationEmbedding(freq_dim, dim).zero_init()
    for k, v in aug.state_dict().items():
        out[AUG_PREFIX + k] = v.to(w.dtype).contiguous()
    meta = {"unimmvsr_format": FORMAT, "unimmvsr_kind": "full", "unimmvsr_backbone": backbone,
            "unimmvsr_id_start": str(id_start), "unimmvsr_video_start": str(video_start),
            "unimmvsr_shift": repr(float(shift))}
    return out, meta


def to_delta(full: dict[str, torch.Tensor], meta: dict[str, str], base: dict[str, torch.Tensor],
             base_name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    delta = {k: v for k, v in full.items() if k not in base or base[k].shape != v.shape or not torch.equal(base[k], v)}
    return delta, {**meta, "unimmvsr_kind": "delta", "unimmvsr_base": base_name}


def merge_delta(delta: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**base, **delta}


def validate(sd: dict[str, torch.Tensor], meta: dict[str, str] | None) -> dict[str, str]:
    """The checked metadata of a full checkpoint; raises NotUniMMVSRError with what is wrong."""
    meta = meta or {}
    if meta.get("unimmvsr_format") != FORMAT:
        if "head.modulation" in sd:
            raise NotUniMMVSRError("this is a plain Wan checkpoint, not a UniMMVSR upscaler: make one from a Wan T2V "
                                   "checkpoint with scripts/unimmvsr_init.py (or load it with UNETLoader)")
        raise NotUniMMVSRError("this file is not a UniMMVSR checkpoint (no unimmvsr_format metadata)")
    backbone = meta.get("unimmvsr_backbone")
    if backbone not in BACKBONES:
        raise NotUniMMVSRError(f"unknown UniMMVSR backbone {backbone!r}")
    c = BACKBONES[backbone]
    w = sd.get("patch_embedding.weight")
    if w is None or w.shape[1] != 2 * c:
        got = None if w is None else w.shape[1]
        raise NotUniMMVSRError(f"patch_embedding takes {got} channels; a {backbone} UniMMVSR needs {2 * c}")
    missing = [k for k in ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias")
               if AUG_PREFIX + k not in sd]
    if missing:
        raise NotUniMMVSRError(f"the augmentation embedding is missing: {', '.join(AUG_PREFIX + k for k in missing)}")
    return meta


def shift_of(meta: dict[str, str]) -> float:
    """The sampling shift a checkpoint asks for (metadata ``unimmvsr_shift``, default 1.0)."""
    raw = meta.get("unimmvsr_shift", str(DEFAULT_SHIFT))
    try:
        shift = float(raw)
    except ValueError:
        raise NotUniMMVSRError(f"unimmvsr_shift {raw!r} is not a number") from None
    if not 0 < shift < 1000:
        raise NotUniMMVSRError(f"unimmvsr_shift {shift} is outside (0, 1000)")
    return shift
