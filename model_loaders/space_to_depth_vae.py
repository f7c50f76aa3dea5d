"""Space-to-Depth VAE: the lossless, weight-free autoencoder of the trained UniMMVSR demo (SPEC §7)."""
from __future__ import annotations

from comfy_api.latest import io

from ..core.autoencoders.space_to_depth import SpaceToDepthVAE
from ..nodes.naming import category, node_id


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
