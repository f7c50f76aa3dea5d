"""MfM as a ComfyUI model (docs/design.md §8): a ``BaseModel`` of flow type whose diffusion model is core.mfm's
transformer, so core samplers, schedulers, previews and ComfyUI's memory manager treat it like any built-in model.

- Sampling: ``ModelSamplingDiscreteFlow`` with the pipeline scheduler's shift, multiplier 1000 — the transformer
  receives σ·1000, as the official pipeline passes its FlowMatchEuler timesteps.
- Latents: 16-channel CogVideoX-class latents; ``process_latent_out`` divides by the VAE's scaling factor (the
  official pipeline divides by 0.958917567 before decoding).
- Conditioning: the text (``c_crossattn``) with its T5 attention mask (padding becomes a −10000 bias in the DiT),
  the MfM condition [B, 5, F, H, W] (R, G, B, depth, mask) and the motion score, all carried per conditioning so
  the negative branch can have zero depth (official).
"""
from __future__ import annotations

import json
import os

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.supported_models_base
import torch

from ..core.mfm.tasks import DEFAULT_MOTION
from ..core.mfm.transformer import MfMTransformer3D

CONDITION_KEY = "mfm_condition"     # in a conditioning's options: {"pixels": [1,5,F,H,W], "motion_score": float}


class MfMLatentFormat(comfy.latent_formats.LatentFormat):
    latent_channels = 16
    latent_dimensions = 3

    def __init__(self, scale_factor: float = 0.958917567):
        self.scale_factor = scale_factor


class _TextCrossAttention:
    """The tag the TMA override reads (samplers/attention_boost.py): MfM's cross-attention keys are text only."""

    @staticmethod
    def is_image_call(keys: int) -> bool:
        return False


class ComfyMfMTransformer(MfMTransformer3D):
    """core.mfm's transformer with its attention routed through ComfyUI's ``optimized_attention`` — the backend
    ComfyUI picked (SDPA, sage, flash, …) and ``optimized_attention_override`` patches such as TMA, which see the
    cross-attention calls tagged as text cross-attention."""

    CACHE_SIZE = 2

    def cached_adapter_output(self, x, condition, condition_id):
        """The adapter's output does not depend on σ: computed once per condition (ids from MfM Apply Condition)
        and per weights in place (their storage is part of the key), not on every step."""
        if condition is None:
            key = ("zero", tuple(x.shape), x.dtype, x.device)
        elif condition_id is not None:
            key = (tuple(condition_id.flatten().tolist()), tuple(condition.shape), x.dtype, condition.device)
        else:
            return None
        key += (self.cond_conv.conv_out.weight.data_ptr(), self.cond_conv.conv_out.weight.device)
        cache = self.__dict__.setdefault("_adapter_cache", {})
        if key not in cache:
            while len(cache) >= self.CACHE_SIZE:
                cache.pop(next(iter(cache)))
            cache[key] = self.adapt(self.condition_for(x) if condition is None else condition.to(x.dtype))
        return cache[key]

    def forward(self, x, timestep, context, transformer_options={}, mfm_condition=None, mfm_condition_id=None,
                **kwargs):
        from comfy.ldm.modules.attention import optimized_attention

        from .attention_boost import CROSS_TAG_KEY, TRACE_ENV

        heads = self.heads

        def attend(q, k, v, bias, cross):
            options = {**transformer_options, CROSS_TAG_KEY: _TextCrossAttention()} if cross else transformer_options
            return optimized_attention(q, k, v, heads, mask=None if bias is None else bias.to(q.dtype),
                                       skip_reshape=True, skip_output_reshape=True, transformer_options=options)

        trace = os.environ.get(TRACE_ENV)
        if trace:   # tests read the σ grid the sampler gave (σ = timestep / 1000)
            with open(trace, "a", encoding="utf-8") as f:
                f.write(json.dumps({"event": "mfm_call", "timestep": [float(t) for t in timestep.flatten()]}) + "\n")
        adapted = self.cached_adapter_output(x, mfm_condition, mfm_condition_id)
        return super().forward(x, timestep, context, attention=attend, mfm_condition=mfm_condition,
                               adapter_output=adapted, **kwargs)


class MfMConfig(comfy.supported_models_base.BASE):
    unet_config = {}
    unet_extra_config = {}
    latent_format = MfMLatentFormat
    memory_usage_factor = 2.0
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]

    def __init__(self, transformer_config: dict, shift: float, scale_factor: float):
        super().__init__(transformer_config)
        self.sampling_settings = {"shift": shift, "multiplier": 1000.0}
        self.latent_format = MfMLatentFormat(scale_factor)

    def get_model(self, state_dict, prefix="", device=None):
        return MfMModel(self, device=device)


class MfMModel(comfy.model_base.BaseModel):
    def __init__(self, model_config: MfMConfig, device=None):
        super().__init__(model_config, comfy.model_base.ModelType.FLOW, device=device,
                         unet_model=ComfyMfMTransformer)

    def extra_conds(self, **kwargs):
        wan = [k for k in ("vace_frames", "vace_mask", "concat_latent_image", "clip_vision_output") if kwargs.get(k)
               is not None]
        if wan:
            raise ValueError(f"positive/negative: a Wan condition ({', '.join(wan)}, e.g. from WanVaceToVideo) reached "
                             f"the MfM model; attach the MfM Condition with MfM Apply Condition instead")
        out = super().extra_conds(**kwargs)
        mask = kwargs.get("attention_mask")
        if mask is not None:
            out["attention_mask"] = comfy.conds.CONDRegular(mask)
        condition = kwargs.get(CONDITION_KEY)
        if condition is None:   # plain text prompts: the official t2v/t2i motion score (5 for video, 0 for one frame)
            noise = kwargs.get("noise")
            frames = noise.shape[2] if noise is not None and noise.ndim == 5 else 2
            out["motion_score"] = comfy.conds.CONDRegular(torch.tensor([0.0 if frames == 1 else DEFAULT_MOTION]))
        if condition is not None:
            out["mfm_condition"] = comfy.conds.CONDRegular(condition["pixels"])
            if condition.get("id") is not None:  # lets the model reuse the adapter's output across steps
                out["mfm_condition_id"] = comfy.conds.CONDRegular(torch.tensor([int(condition["id"])]))
            out["motion_score"] = comfy.conds.CONDRegular(torch.tensor([float(condition["motion_score"])]))
        return out


def is_mfm(model) -> bool:
    return isinstance(getattr(model, "model", None), MfMModel)
