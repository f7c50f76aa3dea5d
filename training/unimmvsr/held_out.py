"""Validation on held-out clips: PSNR/SSIM of the upscaler's output against the HR frames, next to bicubic and the
same model without references (issue "Training"). Sampling is the pack's own path — the UniMMVSR guider on the
model's ComfyUI ModelPatcher, as the node graph runs it — with a short flow schedule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core.evaluation import psnr, ssim


def bicubic(lr: torch.Tensor, width: int, height: int) -> torch.Tensor:
    x = F.interpolate(lr.movedim(-1, 1).float(), size=(height, width), mode="bicubic", align_corners=False)
    return x.clamp(0, 1).movedim(1, -1)


def start_latent(noise: str, lr_latent: torch.Tensor, process_in, seed: int) -> torch.Tensor:
    """What sampling starts from at σ = 1, as the model was trained: Gaussian noise (seeded), zeros, or the clean LR
    latent in the model's space (what the "UniMMVSR Start From LR" node gives a node graph)."""
    if noise == "lr":
        return process_in(lr_latent.float())
    if noise == "zero":
        return torch.zeros(lr_latent.shape)
    return torch.randn(lr_latent.shape, generator=torch.Generator().manual_seed(seed))


def upscale(patcher, vae, sample, text_encoder, *, references: bool, steps: int, seed: int, aug_t: float,
            text_scale: float = 3.0, reference_scale: float = 1.0, reference_end: float = 0.3, sigmas=None,
            noise: str = "gaussian") -> torch.Tensor:
    """Run the UniMMVSR guider of the node graph on one validation sample; returns decoded frames [T, H, W, 3]."""
    import comfy.samplers

    from ...core.unimmvsr.references import Reference
    from ...core.unimmvsr.reference_layout import ID_IMAGE, REFERENCE_VIDEO
    from ...core.unimmvsr.lr_condition import LRCondition, vae_factors
    from ...samplers.unimmvsr_guider import UniMMVSRGuider
    from ...samplers.unimmvsr_model import config_of

    with torch.no_grad():
        lr_latent = vae.encode(sample.lr_up[..., :3]).float()
        spatial, temporal = vae_factors(vae)
        refs = []
        if references:
            refs = [Reference(ID_IMAGE, vae.encode(img)) for img in sample.id_images]
            if sample.reference_video is not None:
                refs.append(Reference(REFERENCE_VIDEO, vae.encode(sample.reference_video)))
        guider = UniMMVSRGuider(patcher)
        guider.set_conds([[text_encoder(sample.prompt), {}]], [[text_encoder(""), {}]])
        guider.configure(lr_condition=LRCondition(lr_latent, aug_t, seed, spatial, temporal), references=refs,
                         text_scale=text_scale, reference_scale=reference_scale, reference_end=reference_end,
                         config=config_of(patcher), tile=None, overlap=(0, 0, 0))
        sigmas = torch.tensor(sigmas, dtype=torch.float32) if sigmas is not None else \
            comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "simple", steps)
        start = start_latent(noise, lr_latent, patcher.model.process_latent_in, seed)
        out = guider.sample(start, torch.zeros_like(start), comfy.samplers.sampler_object("euler"), sigmas,
                            seed=seed, disable_pbar=True)
        frames = vae.decode(out)
    return frames.reshape(-1, *frames.shape[-3:])[: sample.hr.shape[0]].float().cpu().clamp(0, 1)


def validate(patcher, vae, samples, text_encoder, *, steps: int, seed: int = 0, aug_t: float = 600.0,
             text_scale: float = 3.0, reference_scale: float = 1.0, sigmas=None,
             noise: str = "gaussian") -> dict[str, float]:
    """Mean PSNR/SSIM over ``samples`` (PixelSamples) of bicubic, the upscaler without and with references."""
    rows = {"bicubic": [], "no_refs": [], "refs": []}
    for i, s in enumerate(samples):
        rows["bicubic"].append(bicubic(s.lr, s.hr.shape[2], s.hr.shape[1]))
        kw = dict(steps=steps, seed=seed + i, aug_t=aug_t, text_scale=text_scale, reference_scale=reference_scale,
                  sigmas=sigmas, noise=noise)
        rows["no_refs"].append(upscale(patcher, vae, s, text_encoder, references=False, **kw))
        has_refs = bool(s.id_images) or s.reference_video is not None
        rows["refs"].append(upscale(patcher, vae, s, text_encoder, references=True, **kw) if has_refs
                            else rows["no_refs"][-1])
    out = {}
    for name, videos in rows.items():
        out[f"psnr_{name}"] = sum(psnr(v, s.hr) for v, s in zip(videos, samples)) / len(samples)
        out[f"ssim_{name}"] = sum(ssim(v, s.hr) for v, s in zip(videos, samples)) / len(samples)
    return out
