"""Loader nodes of UniMMVSR: the upscaler checkpoint (model_loaders/unimmvsr.py loads it) and the lossless
Space-to-Depth VAE of the trained demo (core/autoencoders/space_to_depth.py; docs/design.md)."""
from __future__ import annotations

from comfy_api.latest import io

from ..core.autoencoders.space_to_depth import SpaceToDepthVAE
from ..distributed.recipe import records_recipe
from ..kit import category, node_id
from ..model_loaders.unimmvsr import load_unimmvsr


class UniMMVSRLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import folder_paths

        return io.Schema(
            node_id=node_id("UniMMVSRLoader"),
            display_name="UniMMVSR Loader",
            category=category("loaders"),
            description="Loads a UniMMVSR upscaler (Wan backbone + LR channels + augmentation embedding) from "
                        "models/unimmvsr. A delta checkpoint also reads its Wan T2V base from models/diffusion_models. "
                        "The model samples with the checkpoint's timestep shift (metadata unimmvsr_shift; paper and "
                        "default 1.0), so schedulers can take it directly — no ModelSamplingSD3 needed.",
            inputs=[io.Combo.Input("unimmvsr_name", options=folder_paths.get_filename_list("unimmvsr"),
                                   tooltip="A UniMMVSR checkpoint (.safetensors) in models/unimmvsr.")],
            outputs=[io.Model.Output(tooltip="The upscaler, with the checkpoint's sampling shift (default 1.0); plug "
                                             "it into the UniMMVSR Guider and BasicScheduler.")],
        )

    @classmethod
    @records_recipe
    def execute(cls, unimmvsr_name) -> io.NodeOutput:
        import folder_paths

        model = load_unimmvsr(folder_paths.get_full_path_or_raise("unimmvsr", unimmvsr_name), unimmvsr_name)
        return io.NodeOutput(model)


class SpaceToDepthVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("SpaceToDepthVAE"),
            display_name="Space-to-Depth VAE (lossless)",
            category=category("loaders"),
            description=("A video autoencoder without weights: each frame's f×f pixel blocks become 3·f² latent "
                         "channels (f = 4: 48 channels, a Wan 2.2-layout latent), no temporal compression, exact "
                         "reconstruction. The trained UniMMVSR demo upscaler works in this space."),
            inputs=[io.Int.Input("factor", default=4, min=1, max=16,
                                 tooltip="Pixels per latent cell along each side. Default 4 (48 channels, what the "
                                         "demo upscaler was trained on), range 1–16.")],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def execute(cls, factor) -> io.NodeOutput:
        return io.NodeOutput(SpaceToDepthVAE(factor))
