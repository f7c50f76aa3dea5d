"""Independent text / reference CFG with the Reference Guidance Threshold (UniMMVSR A.3, eq. 2–3).

    e = e(c_txt, c_ref) + s_txt·(e(c_txt, c_ref) − e(∅_txt, c_ref)) + s_ref·(e(c_txt, c_ref) − e(c_txt, ∅_ref))

with s_ref applied only during the first N_ref steps and 0 afterwards, so a step costs three model evaluations
while the reference term is on and two after. Defaults: 50 steps, s_txt = 3.0, s_ref = 1.0, N_ref = 15.
Note the form: the full prediction plus scaled differences (not the usual uncond + s·(cond − uncond)).
∅_txt is the null prompt (the paper's text dropout trains the model on it).

The threshold is stated here as a fraction of the whole denoising trajectory, N_ref / steps (0.30 for the paper's
15 of 50), and compared with the global progress u of each step computed from its σ: with the `simple` schedule
step i has u = i / steps, so "u < N_ref / steps" is exactly "the first N_ref steps", and it stays right when the
schedule is split over several sampler calls or starts at denoise < 1 (a step count per sampler call would not).
"""
from __future__ import annotations

DEFAULT_STEPS = 50
DEFAULT_TEXT_SCALE = 3.0
DEFAULT_REFERENCE_SCALE = 1.0
DEFAULT_REFERENCE_STEPS = 15
DEFAULT_REFERENCE_END = DEFAULT_REFERENCE_STEPS / DEFAULT_STEPS  # 0.30 of the trajectory


PROGRESS_TOLERANCE = 1e-4  # a step whose u sits on the threshold counts as past it (σ tables have 1e-3 resolution)


def reference_on(u: float, reference_end: float) -> bool:
    """Eq. 3 by global progress: the reference term is on while u < N_ref / steps."""
    return u < reference_end - PROGRESS_TOLERANCE


def combine(full, no_text, no_reference, text_scale: float, reference_scale: float):
    """Eq. 2 on tensors (or numbers). ``no_reference`` may be None when the reference term is off."""
    out = full + text_scale * (full - no_text)
    if reference_scale != 0.0:
        if no_reference is None:
            raise ValueError("a reference-free prediction is needed while s_ref ≠ 0")
        out = out + reference_scale * (full - no_reference)
    return out
