"""SDEdit degradation with the T2V base model (UniMMVSR §3.3 "SDEdit Degradation", A.4, Table 4).

The LR frames (already at the base model's resolution) are VAE-encoded, noised forward to the σ that starts the
last k steps of the base model's ``steps``-step schedule, denoised those k steps text-only (prompt vs null prompt
with ``cfg``) by ComfyUI's own sampler, and decoded. The local structure follows the text-only generation, as the
base model's output would: 5 steps keep some identity, 15 destroy it. k = 0 returns the input unchanged.
"""
from __future__ import annotations

import torch


def with_shift(model, shift: float):
    """A clone of a flow model's ModelPatcher whose sampling uses ``shift`` (what ComfyUI's ModelSamplingSD3 node
    patches in); 0 returns ``model`` unchanged."""
    if not shift:
        return model
    import comfy.model_sampling

    class FlowSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    sampling = FlowSampling(model.model.model_config)
    sampling.set_parameters(shift=shift, multiplier=1000)
    patched = model.clone()
    patched.add_object_patch("model_sampling", sampling)
    return patched


class SDEditDegrader:
    def __init__(self, base_model, vae, text_encoder, steps: int = 50, cfg: float = 5.0, sampler: str = "euler",
                 shift: float = 0.0):
        self.model = with_shift(base_model, shift)   # a ComfyUI ModelPatcher of the frozen T2V base model
        self.vae = vae
        self.text = text_encoder       # prompt → [1, L, D]
        self.steps = steps
        self.cfg = cfg
        self.sampler = sampler

    def sigmas(self, k: int) -> torch.Tensor:
        import comfy.samplers
        full = comfy.samplers.calculate_sigmas(self.model.get_model_object("model_sampling"), "simple", self.steps)
        return full[-(k + 1):]

    def __call__(self, frames: torch.Tensor, k: int, seed: int, prompt: str) -> torch.Tensor:
        """[T, h, w, 3] in [0, 1] → the same shape after k steps of SDEdit."""
        if k == 0:
            return frames
        if not 0 < k <= self.steps:
            raise ValueError(f"SDEdit k = {k} is outside [0, {self.steps}]")
        import comfy.sample
        import comfy.samplers

        with torch.no_grad():
            latent = self.vae.encode(frames[..., :3])
            noise = comfy.sample.prepare_noise(latent, seed)
            positive = [[self.text(prompt), {}]]
            negative = [[self.text(""), {}]]
            out = comfy.sample.sample_custom(self.model, noise, self.cfg, comfy.samplers.sampler_object(self.sampler),
                                             self.sigmas(k), positive, negative, latent, disable_pbar=True, seed=seed)
            decoded = self.vae.decode(out)
        return decoded.reshape(-1, *decoded.shape[-3:])[: frames.shape[0]].float().cpu().clamp(0, 1)
