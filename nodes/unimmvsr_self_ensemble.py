"""UniMMVSR Self-Ensemble: the guider runs on flipped/transposed copies and averages them (inference only; not in
the paper — core.unimmvsr.self_ensemble)."""
from __future__ import annotations

import copy

from comfy_api.latest import io

from ..core.unimmvsr.self_ensemble import ENSEMBLES
from .naming import category, node_id


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
                         "copy (the README gives what it gains on the trained demo). "
                         "Needs a latent that flips exactly — the Space-to-Depth VAE's (Wan VAEs' latents do not) — and "
                         "sampling that starts from the LR (UniMMVSR Start From LR)."),
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
        from ..samplers.unimmvsr_guider import UniMMVSRGuider

        if not isinstance(guider, UniMMVSRGuider):
            raise ValueError(f"guider: a UniMMVSR Guider is needed, got {type(guider).__name__}")
        if copies not in ENSEMBLES:
            raise ValueError(f"copies: {copies!r} is not one of {', '.join(ENSEMBLES)}")
        if guider.distributed is not None:
            raise ValueError("guider: it is spread by UniMMVSR Multi-GPU; the self-ensemble cannot be combined with "
                             "it yet: use one")
        factor, channels = guider.lr_condition.space_to_depth, guider.lr_condition.latent.shape[1]
        if not factor:
            raise ValueError("guider: its LR condition was encoded by a VAE whose latent does not flip exactly (a Wan "
                             "VAE): the self-ensemble needs the Space-to-Depth VAE")
        if channels != 3 * factor * factor:
            raise ValueError(f"guider: its LR condition has {channels} channels, not the {3 * factor * factor} of a "
                             f"space-to-depth latent of factor {factor}")
        guider_copy = copy.copy(guider)
        guider_copy.ensemble = ENSEMBLES[copies]
        guider_copy._evaluators = {}
        return io.NodeOutput(guider_copy)
