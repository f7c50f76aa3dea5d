"""UniMMVSR Upsampler: LR latent (or frames) → decode → bilinear upscale in pixel space → encode (§3.2, "never
interpolate latents"). The clean latent travels with the augmentation timestep and seed; the guider noises it in
the model's own latent space (core.unimmvsr.augmentation.lr_condition), where the forward process is defined."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..core.autoencoders.space_to_depth import SpaceToDepthVAE
from ..core.unimmvsr.augmentation import FIDELITY, REFERENCE_TASKS, sigma_of
from ..core.unimmvsr.upsampling import upscale_frames
from ..core.unimmvsr.lr_condition import LRCondition, vae_factors
from ..kit import category, node_id, rgb_frames, with_rule
from .io_types import LR_CONDITION

VAE_TILE_ABOVE = 1024 * 1024  # pixels per frame above which the VAE runs tiled


class UniMMVSRUpsampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("UniMMVSRUpsampler"),
            display_name="UniMMVSR Upsampler",
            category=category("upscaling"),
            description=("Makes the LR condition: decodes the base model's latent, upscales it bilinearly in pixel "
                         "space to width×height and encodes it again (tiled above 1 MP per frame). The guider noises "
                         "it to the augmentation timestep in the model's latent space. Also gives the empty HR latent "
                         "to sample."),
            inputs=[
                io.Vae.Input("vae", tooltip="The upscaler's VAE (Wan 2.1 or 2.2, matching the upscaler)."),
                with_rule(io.Int.Input("width", default=1920, min=16, max=8192, step=16,
                                  tooltip="Target width. Default 1920, range 16–8192 (3840 for 4K)."),
                     "multiple_of_16"),
                with_rule(io.Int.Input("height", default=1088, min=16, max=8192, step=16,
                                  tooltip="Target height. Default 1088, range 16–8192 (2160 for 4K)."),
                     "multiple_of_16"),
                io.Int.Input("augmentation", default=REFERENCE_TASKS, min=0, max=1000,
                             tooltip=f"Noise-augmentation timestep of the LR condition. Default {REFERENCE_TASKS} "
                                     f"(reference tasks, stronger restoration); {FIDELITY} for fidelity-first VSR; "
                                     "range 0–1000."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the augmentation noise. Default 0, range 0–2147483647."),
                io.Latent.Input("lr_latent", optional=True, tooltip="The base model's low-resolution latent."),
                io.Image.Input("lr_images", optional=True, tooltip="Or low-resolution frames directly."),
            ],
            outputs=[LR_CONDITION.Output(display_name="lr_condition"),
                     io.Latent.Output(display_name="hr_latent", tooltip="Empty latent of the target size."),
                     io.Image.Output(display_name="upscaled_preview")],
        )

    @classmethod
    def execute(cls, vae, width, height, augmentation, seed, lr_latent=None, lr_images=None) -> io.NodeOutput:
        if (lr_latent is None) == (lr_images is None):
            raise ValueError("connect exactly one of lr_latent and lr_images")
        if lr_latent is not None:
            samples = lr_latent["samples"]
            frames = vae.decode(samples)
            frames = frames.reshape(-1, *frames.shape[-3:])
        else:
            frames = rgb_frames(lr_images, "lr_images", "UniMMVSR Upsampler")
        if frames.ndim != 4 or frames.shape[0] == 0:
            raise ValueError(f"lr_images: expected frames [N, H, W, 3], got {tuple(frames.shape)}")
        spatial, temporal = vae_factors(vae)
        if (frames.shape[0] - 1) % temporal:
            raise ValueError(f"the LR video has {frames.shape[0]} frames; this VAE needs {temporal}n+1")
        if width % spatial or height % spatial:
            raise ValueError(f"width and height: {width}×{height} is not a multiple of this VAE's "
                             f"{spatial}× compression")
        sigma_of(augmentation)
        hr = upscale_frames(frames, width, height)
        if width * height > VAE_TILE_ABOVE:
            latent = vae.encode_tiled(hr, tile_x=512, tile_y=512, overlap=64, tile_t=33, overlap_t=8)
        else:
            latent = vae.encode(hr)
        space_to_depth = vae.factor if isinstance(vae, SpaceToDepthVAE) else 0
        condition = LRCondition(latent.float(), float(augmentation), int(seed), spatial, temporal, space_to_depth)
        return io.NodeOutput(condition, {"samples": torch.zeros_like(latent)}, hr[::max(1, hr.shape[0] // 8)])
