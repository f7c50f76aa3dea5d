"""UniMMVSR References: ID images and reference videos, zero-padded in pixel space and VAE-encoded (§3.2)."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..core.unimmvsr.references import ID_IMAGE, REFERENCE_VIDEO, Reference, pad_to, usable_video_frames
from ..core.unimmvsr.lr_condition import vae_factors
from ..kit import category, node_id, rgb_frames, with_rule
from .io_types import REFERENCES

MAX_ID_IMAGES = 8
MAX_VIDEOS = 4
log = logging.getLogger("UniCascade")


def dynamic(inp, group: str):
    inp.extra_dict = {**(inp.extra_dict or {}), "unicascade_dynamic": group}
    return inp


class UniMMVSRReferences(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("UniMMVSRReferences"),
            display_name="UniMMVSR References",
            category=category("upscaling"),
            description=("Encodes ID images and reference videos for the UniMMVSR upscaler: each is scaled down to "
                         "fit (never up) and zero-padded in the VAE's pixel space (mid-grey) to width×height — the "
                         "size of the "
                         "upscaler's window (the HR frame, or the tile size when tiling) — then VAE-encoded. "
                         "A new input appears when the last one is connected."),
            inputs=[
                io.Vae.Input("vae", tooltip="The upscaler's VAE."),
                with_rule(io.Int.Input("width", default=1280, min=16, max=8192, step=16,
                                  tooltip="Pixel width of the window the references are padded to. Default 1280, "
                                          "range 16–8192: the HR width, or the tile width when tiling."),
                     "multiple_of_16"),
                with_rule(io.Int.Input("height", default=720, min=16, max=8192, step=16,
                                  tooltip="Pixel height of that window. Default 720, range 16–8192."),
                     "multiple_of_16"),
                *[dynamic(io.Image.Input(f"id_image_{i}", optional=True,
                                         tooltip="ID image(s): every image of the batch is one identity reference."),
                          "id_image") for i in range(1, MAX_ID_IMAGES + 1)],
                *[dynamic(io.Image.Input(f"reference_video_{i}", optional=True,
                                         tooltip="A reference video (its frames); the first 4n+1 frames are used "
                                                 "(Wan VAEs)."),
                          "reference_video") for i in range(1, MAX_VIDEOS + 1)],
            ],
            outputs=[REFERENCES.Output(display_name="references")],
        )

    @classmethod
    def execute(cls, vae, width, height, **inputs) -> io.NodeOutput:

        spatial, temporal = vae_factors(vae)
        if width % spatial or height % spatial:
            raise ValueError(f"width and height: {width}×{height} is not a multiple of this VAE's {spatial}× "
                             "compression")
        refs = []
        for key in sorted(inputs, key=lambda k: (k.startswith("reference_video"), int(k.rsplit("_", 1)[1]))):
            images = rgb_frames(inputs[key], key, "UniMMVSR References")
            if images is None:
                continue
            if images.ndim != 4 or images.shape[0] == 0:
                raise ValueError(f"{key}: expected IMAGE frames, got shape {tuple(images.shape)}")
            if images.shape[1:3] != (height, width):
                log.info("UniMMVSR References: %s is %dx%d; scaled to fit and zero-padded to %dx%d", key,
                         images.shape[2], images.shape[1], width, height)
            if key.startswith("id_image"):
                for i in range(images.shape[0]):
                    refs.append(Reference(ID_IMAGE, vae.encode(pad_to(images[i:i + 1], width, height))))
            else:
                n = usable_video_frames(images.shape[0], temporal)
                refs.append(Reference(REFERENCE_VIDEO, vae.encode(pad_to(images[:n], width, height))))
        return io.NodeOutput(refs)
