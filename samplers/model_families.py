"""Which attention layout a ComfyUI MODEL has, so patches can refuse what they cannot serve."""
from __future__ import annotations

WAN = "wan"      # Wan 2.1 / 2.2 DiT: self-attention + text (and CLIP-image) cross-attention
FLUX = "flux"    # Flux MM-DiT: joint text+image attention
MFM = "mfm"      # MfM DiT: self-attention + text-only cross-attention


class UnsupportedModelError(ValueError):
    pass


def describe(model) -> str:
    """A short human name of a MODEL: its model class and diffusion-model class."""
    base = getattr(model, "model", None)
    dm = getattr(base, "diffusion_model", None)
    return f"{type(base).__name__} (diffusion model {type(dm).__name__})"


def attention_family(model) -> str | None:
    """``WAN``, ``FLUX`` or None for a ModelPatcher."""
    from comfy.ldm.wan.model import WanModel
    from comfy.ldm.flux.model import Flux

    from ..core.mfm.transformer import MfMTransformer3D

    dm = getattr(getattr(model, "model", None), "diffusion_model", None)
    if isinstance(dm, WanModel):
        return WAN
    if isinstance(dm, MfMTransformer3D):
        return MFM
    if isinstance(dm, Flux) and not any(getattr(b, "flipped_img_txt", False) for b in dm.double_blocks):
        return FLUX
    return None


def require_family(model, allowed: tuple[str, ...], feature: str) -> str:
    family = attention_family(model)
    if family not in allowed:
        names = {WAN: "Wan 2.1/2.2", FLUX: "Flux", MFM: "MfM"}
        wanted = " or ".join(names[a] for a in allowed)
        raise UnsupportedModelError(f"{feature} works on {wanted} models; the MODEL plugged in is {describe(model)}.")
    return family
