"""MfM's VAE as a ComfyUI VAE (docs/design.md §8): the pipeline's ``vae/`` folder is a diffusers
``AutoencoderKLCogVideoX`` (ComfyUI 0.3.75 has no CogVideoX VAE), wrapped in a ModelPatcher so ComfyUI's memory
manager loads and offloads it, and speaking the VAE interface core ``VAEEncode`` / ``VAEDecode`` and their tiled
variants use: IMAGE [F, H, W, 3] in [0, 1] ↔ raw latent [1, C, T, H/8, W/8] with T = (F − 1)/4 + 1. The scaling
factor is the model's (samplers/mfm_model.py applies it through the latent format, as the official pipeline
divides by it before decoding).
diffusers is imported only when a pipeline is loaded.
"""
from __future__ import annotations

import os

import torch

from .mfm_folder import load_state_dict, read_json


class _Holder(torch.nn.Module):
    """What the ModelPatcher moves (it sets ``.device`` on its model, which diffusers models do not allow)."""

    def __init__(self, autoencoder):
        super().__init__()
        self.autoencoder = autoencoder


class CogVideoXVAE:
    latent_dim = 3
    output_channels = 3

    def __init__(self, autoencoder):
        import comfy.model_management
        import comfy.model_patcher

        self.model = autoencoder.eval()
        self.latent_channels = int(autoencoder.config.latent_channels)
        self.temporal = int(autoencoder.config.temporal_compression_ratio)
        self.spatial = 2 ** (len(autoencoder.config.block_out_channels) - 1)
        self.device = comfy.model_management.vae_device()
        self.vae_dtype = next(autoencoder.parameters()).dtype
        self.default_tiling = {k: getattr(autoencoder, k) for k in (   # diffusers' own, what the official run uses
            "tile_sample_min_height", "tile_sample_min_width",
            "tile_overlap_factor_height", "tile_overlap_factor_width")}
        self.patcher = comfy.model_patcher.ModelPatcher(_Holder(autoencoder), load_device=self.device,
                                                        offload_device=comfy.model_management.vae_offload_device())

    def _load(self):
        import comfy.model_management

        comfy.model_management.load_models_gpu([self.patcher])
        return self.patcher.load_device

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        frames = pixels.shape[0]
        if (frames - 1) % self.temporal:
            raise ValueError(f"pixels: {frames} frames; the MfM VAE encodes {self.temporal}n+1 frames")
        device = self._load()
        x = pixels[..., :3].movedim(-1, 0).unsqueeze(0).to(device, self.vae_dtype) * 2.0 - 1.0   # [1, 3, F, H, W]
        with torch.no_grad():
            latent = self.model.encode(x).latent_dist.mode()
        return latent.float().cpu()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[N, H, W, 3] in [0, 1] → raw latents [N, C, h, w], each image encoded as a one-frame video."""
        device = self._load()
        x = images[..., :3].movedim(-1, 1).unsqueeze(2).to(device, self.vae_dtype) * 2.0 - 1.0    # [N, 3, 1, H, W]
        with torch.no_grad():
            latent = self.model.encode(x).latent_dist.mode()
        return latent[:, :, 0].float().cpu()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """As the official pipeline decodes: diffusers' spatial tiling at its default tiles (a no-op for latents
        smaller than a tile); when that runs out of memory, tiles a quarter the size (ComfyUI's VAEDecode falls back
        to tiles the same way)."""
        import comfy.model_management

        if latent.ndim != 5 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"samples: a {self.latent_channels}-channel video latent [B, C, T, h, w] is needed, got "
                             f"{tuple(latent.shape)}")
        device = self._load()
        self.model.enable_tiling(**self.default_tiling)
        try:
            with torch.no_grad():
                video = self.model.decode(latent.to(device, self.vae_dtype)).sample      # [B, 3, F, H, W]
        except comfy.model_management.OOM_EXCEPTION:
            comfy.model_management.soft_empty_cache()
            self.model.enable_tiling(**{**self.default_tiling,
                                        "tile_sample_min_height": self.default_tiling["tile_sample_min_height"] // 2,
                                        "tile_sample_min_width": self.default_tiling["tile_sample_min_width"] // 2})
            with torch.no_grad():
                video = self.model.decode(latent.to(device, self.vae_dtype)).sample
        if video.shape[2] % self.temporal == 0:  # 4T frames: the first 3 are dropped, as the official script does
            video = video[:, :, self.temporal - 1:]
        return ((video.float().clamp(-1, 1) + 1) / 2).movedim(1, -1).cpu()           # [B, F, H, W, 3]

    def decode_tiled(self, latent, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        """diffusers' own spatial tiling (tile sizes in latent cells, as VAEDecodeTiled passes them)."""
        if tile_x and tile_y:
            factor = (overlap or 0) / max(1, min(tile_x, tile_y))
            self.model.enable_tiling(tile_sample_min_height=tile_y * self.spatial,
                                     tile_sample_min_width=tile_x * self.spatial,
                                     tile_overlap_factor_height=factor, tile_overlap_factor_width=factor)
        try:
            return self.decode(latent)
        finally:
            self.model.disable_tiling()

    def encode_tiled(self, pixels, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        if tile_x and tile_y:
            factor = (overlap or 0) / max(1, min(tile_x, tile_y))
            self.model.enable_tiling(tile_sample_min_height=tile_y, tile_sample_min_width=tile_x,
                                     tile_overlap_factor_height=factor, tile_overlap_factor_width=factor)
        try:
            return self.encode(pixels)
        finally:
            self.model.disable_tiling()

    def spacial_compression_decode(self) -> int:
        return self.spatial

    def spacial_compression_encode(self) -> int:
        return self.spatial

    def temporal_compression_decode(self) -> int:
        return self.temporal

    def temporal_compression_encode(self) -> int:
        return self.temporal


def load_mfm_vae(folder: str) -> CogVideoXVAE:

    config = read_json(os.path.join(folder, "vae", "config.json"), "vae")
    kind = config.get("_class_name", "AutoencoderKLCogVideoX")
    if kind != "AutoencoderKLCogVideoX":
        raise ValueError(f"vae: {kind} is not the CogVideoX-class VAE MfM uses")
    try:
        from diffusers import AutoencoderKLCogVideoX
    except ImportError as e:
        raise ValueError("vae: the MfM VAE needs the diffusers package (pip install -r requirements.txt)") from e
    sd = load_state_dict(os.path.join(folder, "vae"), "vae")
    try:
        autoencoder = AutoencoderKLCogVideoX.from_config(config)
    except Exception as e:
        raise ValueError(f"vae: config.json does not describe an AutoencoderKLCogVideoX ({e})") from e
    try:
        missing, unexpected = autoencoder.load_state_dict(sd, strict=False)
    except RuntimeError as e:   # a tensor of another shape
        raise ValueError(f"vae: the weights do not match config.json ({str(e).splitlines()[-1].strip()})") from e
    if missing or unexpected:
        raise ValueError(f"vae: the weights do not match config.json — missing {list(missing)[:4]}, unexpected "
                         f"{list(unexpected)[:4]}")
    import comfy.model_management
    # the official pipeline runs it in bf16; ComfyUI's choice for the device (bf16 where the GPU has it, fp32 on a CPU)
    dtype = comfy.model_management.vae_dtype(comfy.model_management.vae_device(), [torch.bfloat16, torch.float32])
    return CogVideoXVAE(autoencoder.to(dtype))
