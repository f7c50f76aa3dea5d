"""UniMMVSR on a ComfyUI Wan model (UniMMVSR §3.2; SPEC §1, §5 "extension points").

The Wan backbone is ComfyUI's own (loaded by its loader, managed by its memory manager); the UniMMVSR parts are
attached to it:
- LR video by channel concatenation: ``patch_embedding`` takes 2·C channels and ComfyUI's Wan ``concat_cond``
  fills the extra ones from the conditioning's ``concat_latent_image`` (zeros when absent).
- The augmentation-timestep embedding is a sub-module of the diffusion model; an object patch of
  ``time_embedding.forward`` adds its output to the timestep embedding.
- Reference tokens: a DIFFUSION_MODEL wrapper appends the reference latents as extra latent frames (their LR
  channels zero), gives them their own temporal RoPE ranges (core.unimmvsr.reference_layout; spatial positions
  are the normal grid), runs Wan's ``forward_orig`` on the joint sequence — every block's 3D self-attention sees
  target and references as one sequence — and cuts the reference frames off the output.
The guider (samplers/unimmvsr_guider.py) puts the augmentation timestep and the references for each evaluation
into ``transformer_options`` under the keys below.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.unimmvsr.aug_embedding import AugmentationEmbedding
from ..core.unimmvsr.reference_layout import ReferenceLayout

AUG_T_KEY = "unicascade_unimmvsr_aug_t"
REFERENCES_KEY = "unicascade_unimmvsr_references"
CONFIG_KEY = "unicascade_unimmvsr"
WRAPPER_KEY = "unicascade_unimmvsr"
AUG_MODULE = "unimmvsr_aug_embedding"


@dataclass(frozen=True)
class UniMMVSRConfig:
    backbone: str
    latent_channels: int
    id_start: int
    video_start: int


@dataclass
class ReferenceTokens:
    latent: torch.Tensor          # [1, C, R, h, w] in the model's latent space
    layout: ReferenceLayout


def reference_freqs(diffusion_model, target_frames: int, h: int, w: int, layout: ReferenceLayout, device, dtype):
    """RoPE frequencies of the joint sequence: the target grid, then each reference's own temporal range.
    ``target_frames``, ``h``, ``w`` are latent sizes (Wan's rope_encode divides by the patch size itself)."""
    parts = [diffusion_model.rope_encode(target_frames, h, w, device=device, dtype=dtype)]
    for span in layout.spans:
        parts.append(diffusion_model.rope_encode(span.frames, h, w, t_start=span.start, device=device, dtype=dtype))
    return torch.cat(parts, dim=1)


def install(model, aug_embedding: AugmentationEmbedding, config: UniMMVSRConfig) -> None:
    """Attach the UniMMVSR parts to a freshly loaded Wan ModelPatcher (in place)."""
    import comfy.ldm.common_dit
    import comfy.patcher_extension

    dm = model.get_model_object("diffusion_model")
    dm.add_module(AUG_MODULE, aug_embedding)
    time_embedding = dm.time_embedding
    current = {"add": None}

    def time_embedding_forward(x):
        out = type(time_embedding).forward(time_embedding, x)  # [N, dim], N = B (or B·tokens: Wan 2.2 TI2V)
        add = current["add"]
        if add is None:
            return out
        if out.shape[0] != add.shape[0]:
            add = add.repeat_interleave(out.shape[0] // add.shape[0], dim=0)
        return out + add.to(out.dtype)

    def diffusion_wrapper(executor, x, timestep, context, clip_fea=None, time_dim_concat=None,
                          transformer_options={}, **kwargs):
        module = executor.class_obj
        aug_t = float(transformer_options.get(AUG_T_KEY, 0.0))
        embedding = getattr(module, AUG_MODULE)
        current["add"] = embedding(torch.full((x.shape[0],), aug_t, device=x.device))
        try:
            refs: ReferenceTokens | None = transformer_options.get(REFERENCES_KEY)
            if refs is None:
                return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)
            bs, c, t, h, w = x.shape
            x = comfy.ldm.common_dit.pad_to_patch_size(x, module.patch_size)
            ref = refs.latent.to(device=x.device, dtype=x.dtype)
            ref = comfy.ldm.common_dit.pad_to_patch_size(ref, module.patch_size)
            if ref.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"reference latents are {ref.shape[-1]}×{ref.shape[-2]} but the window is "
                                 f"{x.shape[-1]}×{x.shape[-2]}: encode the references at the window's size")
            ref = ref.expand(bs, -1, -1, -1, -1)
            lr_zeros = torch.zeros(bs, c - ref.shape[1], *ref.shape[2:], device=x.device, dtype=x.dtype)
            joint = torch.cat([x, torch.cat([ref, lr_zeros], dim=1)], dim=2)
            freqs = reference_freqs(module, x.shape[2], x.shape[3], x.shape[4], refs.layout, x.device, x.dtype)
            out = module.forward_orig(joint, timestep, context, clip_fea=clip_fea, freqs=freqs,
                                      transformer_options=transformer_options, **kwargs)
            return out[:, :, :t, :h, :w]
        finally:
            current["add"] = None

    model.add_object_patch("diffusion_model.time_embedding.forward", time_embedding_forward)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, diffusion_wrapper)
    model.model_options.setdefault("transformer_options", {})[CONFIG_KEY] = config


def config_of(model) -> UniMMVSRConfig | None:
    return model.model_options.get("transformer_options", {}).get(CONFIG_KEY)
