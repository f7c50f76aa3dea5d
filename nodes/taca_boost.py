"""TACA (Lv et al. 2025) — the joint-attention method TMA adapts — as a MODEL → MODEL patch (docs/design.md §10)."""
from __future__ import annotations

from comfy_api.latest import io

from ..core.attention.schedules import DEFAULT_TACA_GAMMA, DEFAULT_TACA_UNTIL, taca_gamma
from ..samplers.attention_boost import PROGRESS_SOURCES, BoostSchedule, apply_attention_boost
from ..samplers.model_families import FLUX, require_family
from ..kit import category, choice_error, first_error, node_id, plain_errors


class TextAttentionBoostTACA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("TACA"),
            display_name="TACA Joint-Attention Boost",
            category=category("sampling"),
            description=("Temperature-adjusted cross-modal attention for MM-DiT joint attention: image-query × "
                         "text-key logits × γ early in denoising (TACA: γ=1.2 for the first 3 of 30 steps, i.e. "
                         "while progress u < 0.1). Flux models."),
            inputs=[
                io.Model.Input("model", tooltip="A Flux model (joint text+image attention)."),
                io.Float.Input("gamma", default=DEFAULT_TACA_GAMMA, min=1.0, max=3.0, step=0.01,
                               tooltip="γ, the logit multiplier. Default 1.2 (TACA), range 1–3; 1 disables."),
                io.Float.Input("until", default=DEFAULT_TACA_UNTIL, min=0.0, max=1.0, step=0.01,
                               tooltip="The boost applies while progress u < until. Default 0.1 (3 of 30 steps), "
                                       "range 0–1."),
                io.Combo.Input("progress", options=list(PROGRESS_SOURCES), default=PROGRESS_SOURCES[0],
                               tooltip="How u is measured: 'global (from sigma)' (default; right across split "
                                       "samplers and start/end steps) or 'sampler steps' of each sampler call."),
            ],
            outputs=[io.Model.Output(tooltip="A patched clone; the input model is unchanged.")],
        )

    @classmethod
    def validate_inputs(cls, progress=None):
        return first_error(choice_error("progress", progress, PROGRESS_SOURCES))

    @classmethod
    @plain_errors
    def execute(cls, model, gamma, until, progress) -> io.NodeOutput:
        family = require_family(model, (FLUX,), "TACA")

        def factors(u: float) -> tuple[float, float]:
            return taca_gamma(u, gamma, until), 1.0

        boost = BoostSchedule(factors=factors, progress_source=progress, label="taca")
        return io.NodeOutput(apply_attention_boost(model, family, boost))
