"""UniMMVSR Self-Ensemble: the guider runs on flipped/transposed copies and averages them (inference only; not in
the paper — core.unimmvsr.self_ensemble)."""
from __future__ import annotations

from comfy_api.latest import io

from ..core.unimmvsr.self_ensemble import ENSEMBLES
from ..kit import category, node_id
from ..samplers.unimmvsr_guider import SelfEnsembleWindows, UniMMVSRGuider


class UniMMVSRSelfEnsemble(io.ComfyNode):
    """Guider in, a copy of it that averages flipped/transposed copies out (the cached input guider is untouched)."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("UniMMVSRSelfEnsemble"),
            display_name="UniMMVSR Self-Ensemble",
            category=category("upscaling"),
            description=("Every step, the upscaler also runs on flipped (and transposed) copies of the latent, the LR "
                         "condition and the references; the outputs, flipped back, are averaged. Costs one pass per "
                         "copy (docs/experiments.md gives what it gains on the trained demo). "
                         "Needs a latent that flips exactly — the Space-to-Depth VAE's (Wan VAEs' latents do not) "
                         "— and sampling that starts from the LR (UniMMVSR Start From LR)."),
            inputs=[
                io.Guider.Input("guider", tooltip="From the UniMMVSR Guider."),
                io.Combo.Input("copies", options=list(ENSEMBLES), default="flips + transpose x8",
                               tooltip="The copies averaged: the input and its horizontal flip (×2), all four flips "
                                       "(×4), or the flips with and without transposition (×8, default)."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, guider, copies) -> io.NodeOutput:
        if not isinstance(guider, UniMMVSRGuider):
            raise ValueError(f"guider: a UniMMVSR Guider is needed, got {type(guider).__name__}")
        if copies not in ENSEMBLES:
            raise ValueError(f"copies: {copies!r} is not one of {', '.join(ENSEMBLES)}")
        factor, channels = guider.lr_condition.space_to_depth, guider.lr_condition.latent.shape[1]
        if not factor:
            raise ValueError("guider: its LR condition was encoded by a VAE whose latent does not flip exactly (a Wan "
                             "VAE): the self-ensemble needs the Space-to-Depth VAE")
        if channels != 3 * factor * factor:
            raise ValueError(f"guider: its LR condition has {channels} channels, not the {3 * factor * factor} of a "
                             f"space-to-depth latent of factor {factor}")
        return io.NodeOutput(guider.with_execution(SelfEnsembleWindows(ENSEMBLES[copies])))
