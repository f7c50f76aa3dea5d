"""MfM Apply Condition: the condition builder's unified condition onto the text conditioning of an MfM model
(MfM §3.1; docs/design.md §9): the positive branch gets R, G, B, depth, mask and the motion score; the negative
branch the same with zero depth (the official pipeline zeroes the unconditional branch's depth only)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from .io_types import MFM_CONDITION
from ..kit import category, node_id

DEPTH_CHANNEL = 3


def with_condition(conditioning: list, pixels: torch.Tensor, motion_score: float) -> list:
    """``conditioning`` with the condition attached; a fresh random id names these pixels (the model caches the
    adapter's output per id)."""
    import secrets

    from ..samplers.mfm_model import CONDITION_KEY

    ident = secrets.randbits(62)
    return [[c, {**opts, CONDITION_KEY: {"pixels": pixels, "motion_score": motion_score, "id": ident}}]
            for c, opts in conditioning]


class MfMApplyCondition(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("MfMApplyCondition"),
            display_name="MfM Apply Condition",
            category=category("conditioning"),
            description="Attaches the MfM Condition's pixels, depth, mask and motion score to the prompts of an MfM "
                        "model (the light adapter adds them to the patch embedding). The negative gets zero depth, "
                        "as the official pipeline does. Outputs an empty latent of the condition's size.",
            inputs=[
                io.Model.Input("model", tooltip="The MfM Pipeline Loader's MODEL (checked: a Wan model takes the "
                                                "builder's VACE outputs instead)."),
                io.Conditioning.Input("positive", tooltip="The builder's positive prompt, encoded."),
                io.Conditioning.Input("negative", tooltip="The builder's negative prompt, encoded."),
                MFM_CONDITION.Input("condition", tooltip="From MfM Condition (16 tasks)."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"),
                     io.Conditioning.Output(display_name="negative"),
                     io.Latent.Output(display_name="latent", tooltip="Empty latent: 16 channels, (F − 1)/4 + 1 "
                                                                     "frames, H/8 × W/8.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, condition) -> io.NodeOutput:
        from ..samplers.mfm_model import is_mfm

        if not is_mfm(model):
            kind = type(getattr(model, "model", model)).__name__
            raise ValueError(f"model: a {kind} model cannot take an MfM condition; load MfM with the MfM Pipeline "
                             f"Loader (for Wan, feed the condition builder's VACE outputs to WanVaceToVideo)")
        pixels = condition.tensor()
        channels = model.model.diffusion_model.condition_channels
        if channels == 4:  # a model trained without depth: R, G, B, mask
            pixels = pixels[:, [0, 1, 2, 4]]
        unconditional = pixels.clone()
        if channels == 5:
            unconditional[:, DEPTH_CHANNEL] = 0
        _, _, frames, height, width = pixels.shape
        latent = torch.zeros(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
        return io.NodeOutput(with_condition(positive, pixels, condition.motion_score),
                             with_condition(negative, unconditional, condition.motion_score), {"samples": latent})
