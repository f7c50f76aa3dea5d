"""Temperature Modality Alignment as a MODEL → MODEL patch (UniVid §2.3, eq. 2–5)."""
from __future__ import annotations

from comfy_api.latest import io

from ..core.attention.schedules import (DEFAULT_IMG_WINDOW_START, DEFAULT_LAMBDA_IMG, DEFAULT_LAMBDA_TXT,
                                        DEFAULT_TXT_WINDOW_END, SCHEDULES, alpha_img, alpha_txt)
from ..samplers.attention_boost import PROGRESS_SOURCES, BoostSchedule, apply_attention_boost
from ..samplers.model_families import FLUX, MFM, WAN, require_family
from ..distributed.recipe import records_recipe
from ..kit import category, choice_error, first_error, node_id, plain_errors, require_choice

LAMBDA_MAX = 2.0


class TemperatureModalityAlignment(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("TemperatureModalityAlignment"),
            display_name="TMA Attention Boost (UniVid)",
            category=category("sampling"),
            description=(
                "Temperature Modality Alignment (UniVid §2.3): multiplies the pre-softmax logits of video queries on "
                "text keys by α_txt(u) (strong early, neutral after the text window) and, on Wan I2V/FLF2V "
                "CLIP-image keys, by α_img(u) (late boost). Returns a patched clone: plug it into any sampler. "
                "Works with every attention backend. Wan 2.1/2.2 and MfM (text cross-attention) and Flux (joint "
                "attention: image-query × text-key logits)."),
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1/2.2 (T2V, I2V, FLF2V, VACE, 5B, 14B), MfM or Flux model."),
                io.Float.Input("lambda_txt", default=DEFAULT_LAMBDA_TXT, min=0.0, max=LAMBDA_MAX, step=0.01,
                               tooltip=f"λ_txt: peak text boost is 1+λ at the first step. Default "
                                       f"{DEFAULT_LAMBDA_TXT} (paper), range 0–{LAMBDA_MAX}; 0 disables."),
                io.Float.Input("lambda_img", default=DEFAULT_LAMBDA_IMG, min=0.0, max=LAMBDA_MAX, step=0.01,
                               tooltip=f"λ_img: peak reference-image boost (Wan I2V/FLF2V CLIP-image keys) is 1+λ "
                                       f"at the last step. Default {DEFAULT_LAMBDA_IMG} (paper), range "
                                       f"0–{LAMBDA_MAX}; ignored by models without image cross-attention."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="cosine",
                               tooltip="Shape over the window (paper Table 4): cosine (default, the paper's "
                                       "best), linear, step, constant (1+λ at every step), off."),
                io.Float.Input("txt_window_end", default=DEFAULT_TXT_WINDOW_END, min=0.01, max=1.0, step=0.01,
                               tooltip=f"Progress u where the text boost has decayed to 1. Default "
                                       f"{DEFAULT_TXT_WINDOW_END} (first 40% of denoising), range 0.01–1."),
                io.Float.Input("img_window_start", default=DEFAULT_IMG_WINDOW_START, min=0.0, max=0.99, step=0.01,
                               tooltip=f"Progress u where the image boost starts rising. Default "
                                       f"{DEFAULT_IMG_WINDOW_START}, range 0–0.99."),
                io.Combo.Input("progress", options=list(PROGRESS_SOURCES), default=PROGRESS_SOURCES[0],
                               tooltip="How u is measured. 'global (from sigma)' (default): position in the whole "
                                       "schedule, correct across split samplers, start/end steps and denoise<1; it "
                                       "is the fraction of the model's timestep range, which equals the step "
                                       "fraction for the 'simple'/'normal' schedulers (karras and exponential put "
                                       "fewer steps early). 'sampler steps': step fraction of each sampler call."),
            ],
            outputs=[io.Model.Output(tooltip="A patched clone; the input model is unchanged.")],
        )

    @classmethod
    def validate_inputs(cls, schedule=None):
        return first_error(choice_error("schedule", schedule, SCHEDULES))

    @classmethod
    @plain_errors
    @records_recipe
    def execute(cls, model, lambda_txt, lambda_img, schedule, txt_window_end, img_window_start,
                progress) -> io.NodeOutput:
        require_choice("progress", progress, PROGRESS_SOURCES)
        family = require_family(model, (WAN, FLUX, MFM), "TMA")

        def factors(u: float) -> tuple[float, float]:
            return (alpha_txt(u, lambda_txt, schedule, txt_window_end),
                    alpha_img(u, lambda_img, schedule, img_window_start))

        boost = BoostSchedule(factors=factors, progress_source=progress, label=f"tma-{schedule}")
        patched = apply_attention_boost(model, family, boost)
        return io.NodeOutput(patched)
