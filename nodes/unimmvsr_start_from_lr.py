"""UniMMVSR Start From LR: a NOISE whose "noise" is the clean LR latent, for upscalers trained to flow from the LR
video to the HR video (trainer ``[training] noise = "lr"``, as the trained demo is): at σ = 1 the sample is the
LR latent in the model's space and the model predicts the residual it lacks."""
from __future__ import annotations

from comfy_api.latest import io

from ..samplers.unimmvsr_model import config_of
from ..kit import category, node_id
from .io_types import LR_CONDITION


class LRStart:
    """ComfyUI's NOISE interface (``seed``, ``generate_noise``) over the LR condition."""

    def __init__(self, model, lr_condition):
        self.model = model
        self.lr_condition = lr_condition
        self.seed = 0

    def generate_noise(self, input_latent):
        samples = input_latent["samples"]
        lr = self.lr_condition.latent
        if tuple(samples.shape) != tuple(lr.shape):
            raise ValueError(f"the latent to sample is {tuple(samples.shape)} but the LR condition is "
                             f"{tuple(lr.shape)}: sample the Upsampler's hr_latent")
        return self.model.model.process_latent_in(lr.float()).to(samples.dtype)


class UniMMVSRStartFromLR(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("UniMMVSRStartFromLR"),
            display_name="UniMMVSR Start From LR",
            category=category("upscaling"),
            description=("Sampling starts from the clean LR latent instead of Gaussian noise: for upscalers trained "
                         "with noise = \"lr\" (the trained demo). Plug into SamplerCustomAdvanced's noise input. "
                         "Upscalers trained as in the paper start from noise (RandomNoise)."),
            inputs=[io.Model.Input("model", tooltip="The UniMMVSR model (its latent format normalises the LR)."),
                    LR_CONDITION.Input("lr_condition", tooltip="From the UniMMVSR Upsampler.")],
            outputs=[io.Noise.Output()],
        )

    @classmethod
    def execute(cls, model, lr_condition) -> io.NodeOutput:
        if config_of(model) is None:
            raise ValueError("model: this is not a UniMMVSR model; load one with the UniMMVSR Loader")
        return io.NodeOutput(LRStart(model, lr_condition))
