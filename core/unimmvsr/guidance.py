"""Independent text / reference CFG with the Reference Guidance Threshold (UniMMVSR A.3, eq. 2–3).

    e = e(c_txt, c_ref) + s_txt·(e(c_txt, c_ref) − e(∅_txt, c_ref)) + s_ref·(e(c_txt, c_ref) − e(c_txt, ∅_ref))

with s_ref applied only during the first N_ref steps and 0 afterwards, so a step costs three model evaluations
while the reference term is on and two after. Defaults: 50 steps, s_txt = 3.0, s_ref = 1.0, N_ref = 15.
Note the form: the full prediction plus scaled differences (not the usual uncond + s·(cond − uncond)).
"""
from __future__ import annotations

DEFAULT_STEPS = 50
DEFAULT_TEXT_SCALE = 3.0
DEFAULT_REFERENCE_SCALE = 1.0
DEFAULT_REFERENCE_STEPS = 15


def reference_scale_at(step_index: int, reference_scale: float, reference_steps: int) -> float:
    """s_ref for this step under the threshold (eq. 3)."""
    return reference_scale if step_index < reference_steps else 0.0


def evaluations_per_step(step_index: int, reference_scale: float, reference_steps: int,
                         has_references: bool = True) -> int:
    """Model evaluations a step needs: full and no-text always; no-reference only while s_ref ≠ 0."""
    active = has_references and reference_scale_at(step_index, reference_scale, reference_steps) != 0.0
    return 3 if active else 2


def combine(full, no_text, no_reference, text_scale: float, reference_scale: float):
    """Eq. 2 on tensors (or numbers). ``no_reference`` may be None when the reference term is off."""
    out = full + text_scale * (full - no_text)
    if reference_scale != 0.0:
        if no_reference is None:
            raise ValueError("a reference-free prediction is needed while s_ref ≠ 0")
        out = out + reference_scale * (full - no_reference)
    return out
