"""TACA (Lv et al. 2025) — the joint-attention method TMA adapts — as a MODEL → MODEL patch (SPEC §3)."""
from __future__ import annotations

from comfy_api.latest import io

from ..core.attention.schedules import taca_gamma
from ..samplers.attention_boost import PROGRESS_SOURCES, BoostSchedule, apply_attention_boost
from ..samplers.model_families import FLUX, require_family
from .naming import category, node_id


class TextAttentionBoostTACA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("TACA"),
            display_name="TACA Joint-Attention Boost",
            category=category("sampling"),
            description=("Temperature-adjusted cross-modal attention for MM-DiT joint attention: image-query × "
                         "text-key logits × γ for the first N steps of each sampler call (TACA: γ=1.2, 3 of 30 "
                         "steps). Flux models."),
            inputs=[
                io.Model.Input("model", tooltip="A Flux model (joint text+image attention)."),
                io.Float.Input("gamma", default=1.2, min=1.0, max=3.0, step=0.01,
                               tooltip="γ, the logit multiplier. Default 1.2 (TACA), range 1–3; 1 disables."),
                io.Int.Input("boosted_steps", default=3, min=0, max=1000,
                             tooltip="N: the boost applies to sampler steps 0..N−1. Default 3, range 0–1000."),
            ],
            outputs=[io.Model.Output(tooltip="A patched clone; the input model is unchanged.")],
        )

    @classmethod
    def execute(cls, model, gamma, boosted_steps) -> io.NodeOutput:
        family = require_family(model, (FLUX,), "TACA")

        def factors(u: float, step_index: int) -> tuple[float, float]:
            return taca_gamma(step_index, gamma, boosted_steps), 1.0

        boost = BoostSchedule(factors=factors, progress_source=PROGRESS_SOURCES[1], label="taca")
        return io.NodeOutput(apply_attention_boost(model, family, boost))
