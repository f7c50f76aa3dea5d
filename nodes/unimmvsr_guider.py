"""UniMMVSR Guider: independent text/reference CFG with the reference guidance threshold, tiled for 4K (A.3)."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..core.unimmvsr.guidance import DEFAULT_REFERENCE_SCALE, DEFAULT_REFERENCE_STEPS, DEFAULT_TEXT_SCALE
from ..samplers.unimmvsr_model import config_of
from .naming import category, node_id
from .unimmvsr_references import REFERENCES
from .unimmvsr_upsampler import LR_CONDITION

log = logging.getLogger("UniCascade")


class UniMMVSRGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("UniMMVSRGuider"),
            display_name="UniMMVSR Guider",
            category=category("upscaling"),
            description=("e = e(txt, ref) + s_txt·(e(txt, ref) − e(∅, ref)) + s_ref·(e(txt, ref) − e(txt, ∅)), with "
                         "s_ref only in the first N_ref steps (three model evaluations per step, then two). Plug "
                         "into SamplerCustomAdvanced (paper: 50 steps, ipndm = PNDM family). Tiles > 0 split each "
                         "step into overlapping windows blended without seams; memory is bounded by the tile."),
            inputs=[
                io.Model.Input("model", tooltip="A UniMMVSR model (UniMMVSR Loader)."),
                io.Conditioning.Input("positive", tooltip="The text prompt."),
                io.Conditioning.Input("negative", tooltip="The 'no text' condition (empty or negative prompt)."),
                LR_CONDITION.Input("lr_condition", tooltip="From the UniMMVSR Upsampler."),
                io.Float.Input("text_scale", default=DEFAULT_TEXT_SCALE, min=0.0, max=30.0, step=0.1,
                               tooltip=f"s_txt. Default {DEFAULT_TEXT_SCALE} (paper), range 0–30."),
                io.Float.Input("reference_scale", default=DEFAULT_REFERENCE_SCALE, min=0.0, max=30.0, step=0.1,
                               tooltip=f"s_ref. Default {DEFAULT_REFERENCE_SCALE} (paper), range 0–30. Raising it "
                                       "over-sharpens (paper Fig. 8)."),
                io.Int.Input("reference_steps", default=DEFAULT_REFERENCE_STEPS, min=0, max=1000,
                             tooltip=f"N_ref: steps with reference guidance. Default {DEFAULT_REFERENCE_STEPS} "
                                     "(paper), range 0–1000."),
                io.Int.Input("tile_width", default=0, min=0, max=8192, step=16,
                             tooltip="Pixel width of a spatial tile; 0 (default) = no tiling. Range 0–8192."),
                io.Int.Input("tile_height", default=0, min=0, max=8192, step=16,
                             tooltip="Pixel height of a spatial tile; 0 (default) = no tiling. Range 0–8192."),
                io.Int.Input("tile_overlap", default=128, min=0, max=2048, step=16,
                             tooltip="Pixel overlap of neighbouring tiles. Default 128, range 0–2048."),
                io.Int.Input("chunk_frames", default=0, min=0, max=1001,
                             tooltip="Frames of a temporal chunk (4n+1); 0 (default) = all frames. Range 0–1001."),
                io.Int.Input("chunk_overlap", default=8, min=0, max=64, step=4,
                             tooltip="Frame overlap of neighbouring chunks (multiple of 4). Default 8, range 0–64."),
                REFERENCES.Input("references", optional=True, tooltip="From UniMMVSR References (optional)."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, lr_condition, text_scale, reference_scale, reference_steps,
                tile_width, tile_height, tile_overlap, chunk_frames, chunk_overlap, references=None) -> io.NodeOutput:
        import node_helpers

        from ..samplers.unimmvsr_guider import make_guider_class

        config = config_of(model)
        if config is None:
            raise ValueError("model: this is not a UniMMVSR model; load one with the UniMMVSR Loader "
                             "(a plain Wan model has no LR channels or reference handling)")
        if lr_condition.latent.shape[1] != config.latent_channels:
            raise ValueError(f"lr_condition has {lr_condition.latent.shape[1]} latent channels; this {config.backbone} "
                             f"upscaler needs {config.latent_channels} (use its own VAE)")
        if reference_scale > 0 and reference_steps > 0 and not references:
            log.warning("UniMMVSR Guider: reference_scale %.2f but no references are connected: running as T2V-VSR "
                        "(two evaluations per step)", reference_scale)
        if chunk_frames and (chunk_frames - 1) % 4:
            raise ValueError(f"chunk_frames: {chunk_frames} is not 4n+1")
        if (tile_width > 0) != (tile_height > 0):
            raise ValueError("tile_width and tile_height: set both (or both 0 for no tiling)")
        tiled = tile_width > 0 or chunk_frames > 0
        _, _, t, h, w = lr_condition.latent.shape
        tile = ((chunk_frames - 1) // 4 + 1 if chunk_frames else t, tile_height // 8 if tile_height else h,
                tile_width // 8 if tile_width else w) if tiled else None
        overlap = (chunk_overlap // 4, tile_overlap // 8, tile_overlap // 8)
        values = {"concat_latent_image": lr_condition.latent}
        guider = make_guider_class()(model)
        guider.set_conds(node_helpers.conditioning_set_values(positive, values),
                         node_helpers.conditioning_set_values(negative, values))
        guider.configure(lr_latent=lr_condition.latent, aug_t=lr_condition.aug_t, references=references,
                         text_scale=text_scale, reference_scale=reference_scale, reference_steps=reference_steps,
                         config=config, tile=tile, overlap=overlap if tiled else (0, 0, 0))
        return io.NodeOutput(guider)
