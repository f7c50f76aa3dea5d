"""MfM Assemble Output: the official script's last step on the decoded frames (core/mfm/assembly.py)."""
from __future__ import annotations

from comfy_api.latest import io

from ..core.mfm.assembly import assemble
from .io_types import MFM_CONDITION
from ..kit import category, node_id


class MfMAssembleOutput(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("MfMAssembleOutput"),
            display_name="MfM Assemble Output",
            category=category("conditioning"),
            description="What the official MfM script does to the decoded frames before saving: video extension "
                        "puts the source video's earlier frames before the generated ones (clip transition also "
                        "clip B's later frames after them); image super-resolution resizes to 4× the input, image "
                        "colorization back to the input's size. Other tasks pass through unchanged.",
            inputs=[MFM_CONDITION.Input("condition", tooltip="The MfM Condition the frames were generated with."),
                    io.Image.Input("images", tooltip="The decoded frames (VAE Decode).")],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, condition, images) -> io.NodeOutput:
        return io.NodeOutput(assemble(condition, images))
