"""API-format Wan text-to-video graphs on the tiny fixture models."""
from __future__ import annotations

from .graph import Graph
from .tiny_models import UMT5, WAN21_T2V

TEXT_ENCODER_LOADER = "UniCascadeTestTinyTextEncoderLoader"


def wan_t2v_graph(prefix: str, *, unet: str = WAN21_T2V, tma: dict | None = None, seed: int = 1, steps: int = 4,
                  cfg: float = 5.0, width: int = 64, height: int = 64, length: int = 5,
                  sampler: str = "euler", scheduler: str = "simple", sampler_node: str = "KSampler",
                  split_at: int | None = None, positive: str = "a red cat runs across a green field",
                  negative: str = "blurry", save_images: bool = False, denoise: float = 1.0,
                  separate_branches: bool = False, attention: str | None = None) -> dict:
    """Loader → (TMA) → (UniCascade Attention, backend ``attention``) → sampler → SaveLatent.
    ``sampler_node``: KSampler | SamplerCustomAdvanced.
    ``split_at``: run the schedule in two SamplerCustomAdvanced calls split at that step (SplitSigmas)."""
    g = Graph()
    model = g.node("UNETLoader", unet_name=unet, weight_dtype="default")
    model = g.node("ModelSamplingSD3", model=model[0], shift=8.0)
    if tma is not None:
        model = g.node("UniCascadeTemperatureModalityAlignment", model=model[0], **tma)
    if attention is not None:
        model = g.node("UniCascadeAttentionBackend", model=model[0], backend=attention)
    clip = g.node(TEXT_ENCODER_LOADER, clip_name=UMT5)
    pos = g.node("CLIPTextEncode", clip=clip[0], text=positive)
    if separate_branches:  # text lengths ComfyUI cannot pad together: the negative gets its own model call
        negative = ", ".join(["blurry low quality"] * 40)
    neg = g.node("CLIPTextEncode", clip=clip[0], text=negative)
    latent = g.node("EmptyHunyuanLatentVideo", width=width, height=height, length=length, batch_size=1)
    if sampler_node == "KSampler" and split_at is None:
        out = g.node("KSampler", model=model[0], seed=seed, steps=steps, cfg=cfg, sampler_name=sampler,
                     scheduler=scheduler, positive=pos[0], negative=neg[0], latent_image=latent[0], denoise=denoise)
        samples = out[0]
    else:
        guider = g.node("CFGGuider", model=model[0], positive=pos[0], negative=neg[0], cfg=cfg)
        sigmas = g.node("BasicScheduler", model=model[0], scheduler=scheduler, steps=steps, denoise=1.0)
        sampler_obj = g.node("KSamplerSelect", sampler_name=sampler)
        noise = g.node("RandomNoise", noise_seed=seed)
        if split_at is None:
            out = g.node("SamplerCustomAdvanced", noise=noise[0], guider=guider[0], sampler=sampler_obj[0],
                         sigmas=sigmas[0], latent_image=latent[0])
            samples = out[0]
        else:
            split = g.node("SplitSigmas", sigmas=sigmas[0], step=split_at)
            first = g.node("SamplerCustomAdvanced", noise=noise[0], guider=guider[0], sampler=sampler_obj[0],
                           sigmas=split[0], latent_image=latent[0])
            disabled = g.node("DisableNoise")
            second = g.node("SamplerCustomAdvanced", noise=disabled[0], guider=guider[0], sampler=sampler_obj[0],
                            sigmas=split[1], latent_image=first[0])
            samples = second[0]
    g.node("SaveLatent", samples=samples, filename_prefix=prefix)
    if save_images:
        vae = g.node("VAELoader", vae_name="wan_2.1_vae.safetensors")
        images = g.node("VAEDecode", samples=samples, vae=vae[0])
        g.node("SaveImage", images=images[0], filename_prefix=prefix)
    return g.prompt()
