"""UniMMVSR Guider: independent text/reference CFG with the reference guidance threshold, tiled for 4K (A.3)."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..core.unimmvsr.guidance import DEFAULT_REFERENCE_END, DEFAULT_REFERENCE_SCALE, DEFAULT_TEXT_SCALE
from ..samplers.unimmvsr_model import config_of
from ..kit import category, node_id
from .io_types import LR_CONDITION, REFERENCES

log = logging.getLogger("UniCascade")


class UniMMVSRGuiderNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("UniMMVSRGuider"),
            display_name="UniMMVSR Guider",
            category=category("upscaling"),
            description=("e = e(txt, ref) + s_txt·(e(txt, ref) − e(∅, ref)) + s_ref·(e(txt, ref) − e(txt, ∅)), with "
                         "s_ref only over the first part of denoising (paper: 15 of 50 steps; three model "
                         "evaluations per step, then two). Plug into SamplerCustomAdvanced (paper: 50 steps, ipndm "
                         "= PNDM family, shift 1.0 — the UniMMVSR Loader sets the checkpoint's shift). Tiles > 0 "
                         "split each step into overlapping windows blended without seams; memory is bounded by the "
                         "tile."),
            inputs=[
                io.Model.Input("model", tooltip="A UniMMVSR model (UniMMVSR Loader)."),
                io.Conditioning.Input("positive", tooltip="The text prompt."),
                io.Conditioning.Input("negative", tooltip="∅_txt of the text guidance term. The paper uses the null "
                                      "prompt: encode an empty text. A negative prompt here is a deliberate "
                                      "deviation from the paper."),
                LR_CONDITION.Input("lr_condition", tooltip="From the UniMMVSR Upsampler."),
                io.Float.Input("text_scale", default=DEFAULT_TEXT_SCALE, min=0.0, max=30.0, step=0.1,
                               tooltip=f"s_txt. Default {DEFAULT_TEXT_SCALE} (paper), range 0–30."),
                io.Float.Input("reference_scale", default=DEFAULT_REFERENCE_SCALE, min=0.0, max=30.0, step=0.1,
                               tooltip=f"s_ref. Default {DEFAULT_REFERENCE_SCALE} (paper), range 0–30. Raising it "
                                       "over-sharpens (paper Fig. 8)."),
                io.Float.Input("reference_end", default=DEFAULT_REFERENCE_END, min=0.0, max=1.0, step=0.01,
                               tooltip=f"Reference guidance threshold: s_ref is on while denoising progress is below "
                                       f"this fraction of the whole schedule, read from σ (so it holds with "
                                       f"SplitSigmas, several samplers or denoise < 1). Default "
                                       f"{DEFAULT_REFERENCE_END} = the paper's N_ref 15 of 50 steps; range 0–1 "
                                       f"(0 = never, 1 = every step)."),
                io.Int.Input("tile_width", default=0, min=0, max=8192, step=16,
                             tooltip="Pixel width of a spatial tile; 0 (default) = no tiling. Range 0–8192. Sizes "
                                     "are turned into latent sizes by the VAE's own compression (8× Wan 2.1, 16× Wan "
                                     "2.2)."),
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
    def execute(cls, model, positive, negative, lr_condition, text_scale, reference_scale, reference_end,
                tile_width, tile_height, tile_overlap, chunk_frames, chunk_overlap, references=None) -> io.NodeOutput:
        from ..samplers.unimmvsr_guider import UniMMVSRGuider as Guider

        config = config_of(model)
        if config is None:
            raise ValueError("model: this is not a UniMMVSR model; load one with the UniMMVSR Loader "
                             "(a plain Wan model has no LR channels or reference handling)")
        if lr_condition.latent.shape[1] != config.latent_channels:
            raise ValueError(f"lr_condition has {lr_condition.latent.shape[1]} latent channels; this {config.backbone} "
                             f"upscaler needs {config.latent_channels} (use its own VAE)")
        if reference_scale > 0 and reference_end > 0 and not references:
            log.warning("UniMMVSR Guider: reference_scale %.2f but no references are connected: running as T2V-VSR "
                        "(two evaluations per step)", reference_scale)
        tile, overlap = latent_tiling(lr_condition, tile_width, tile_height, tile_overlap, chunk_frames, chunk_overlap)
        guider = Guider(model)
        guider.set_conds(positive, negative)
        guider.configure(lr_condition=lr_condition, references=references, text_scale=text_scale,
                         reference_scale=reference_scale, reference_end=reference_end, config=config, tile=tile,
                         overlap=overlap)
        return io.NodeOutput(guider)


def latent_tiling(lr_condition, tile_width: int, tile_height: int, tile_overlap: int, chunk_frames: int,
                  chunk_overlap: int) -> tuple[tuple[int, int, int] | None, tuple[int, int, int]]:
    """Pixel/frame tile sizes → latent (frames, height, width) sizes by the VAE's own compression factors."""
    s, f = lr_condition.spatial_factor, lr_condition.temporal_factor
    if chunk_frames and (chunk_frames - 1) % f:
        raise ValueError(f"chunk_frames: {chunk_frames} is not {f}n+1")
    if chunk_overlap % f:
        raise ValueError(f"chunk_overlap: {chunk_overlap} is not a multiple of {f} (the VAE's temporal compression)")
    if (tile_width > 0) != (tile_height > 0):
        raise ValueError("tile_width and tile_height: set both (or both 0 for no tiling)")
    for name, value in (("tile_width", tile_width), ("tile_height", tile_height), ("tile_overlap", tile_overlap)):
        if value % s:
            raise ValueError(f"{name}: {value} is not a multiple of this VAE's {s}× spatial compression")
    if not (tile_width > 0 or chunk_frames > 0):
        return None, (0, 0, 0)
    _, _, t, h, w = lr_condition.latent.shape
    tile = ((chunk_frames - 1) // f + 1 if chunk_frames else t, tile_height // s if tile_height else h,
            tile_width // s if tile_width else w)
    return tile, (chunk_overlap // f, tile_overlap // s, tile_overlap // s)
