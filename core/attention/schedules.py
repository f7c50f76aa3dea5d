"""Timestep schedules for cross-modal attention temperature (UniVid §2.3, eq. 3 and 5; Table 4).

``u`` is the normalised denoising progress: 0 at the first (noisiest) step, 1 at the end.

- ``alpha_txt(u)`` boosts visual→text logits early: the paper's cosine form is
  ``1 + λ/2 · (1 + cos(π·u/end))`` for ``u ≤ end`` (end = 0.4), else 1 (eq. 3).
- ``alpha_img(u)`` boosts visual→reference-image logits late: ``1`` for ``u ≤ start`` (start = 0.6), else
  ``1 + λ/2 · (1 − cos(π·(u − start)/(1 − start)))`` (eq. 5).

The paper's ablation (Table 4) compares constant, step, linear and cosine schedules without writing the
non-cosine ones out. We define them with the same window and the same peak ``1 + λ`` so that only the shape
differs: *linear* ramps between the peak and 1 across the window; *step* holds the peak for the whole window
and drops to 1 at its edge; *constant* holds the peak for every ``u`` (no timestep dependence); *off* is 1.
"""
from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "step", "constant", "off")

DEFAULT_LAMBDA_TXT = 0.3
DEFAULT_LAMBDA_IMG = 0.3
DEFAULT_TXT_WINDOW_END = 0.4
DEFAULT_IMG_WINDOW_START = 0.6


def _check(schedule: str, lam: float, u: float) -> float:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if lam < 0:
        raise ValueError(f"λ must be ≥ 0 (got {lam})")
    return min(max(float(u), 0.0), 1.0)


def alpha_txt(u: float, lam: float = DEFAULT_LAMBDA_TXT, schedule: str = "cosine",
              end: float = DEFAULT_TXT_WINDOW_END) -> float:
    """Early text boost α_txt(u) (UniVid eq. 3): peak 1+λ at u=0, neutral (1) after ``end``."""
    u = _check(schedule, lam, u)
    if schedule == "off" or lam == 0.0:
        return 1.0
    if schedule == "constant":
        return 1.0 + lam
    if end <= 0.0 or u > end:
        return 1.0
    if schedule == "cosine":
        return 1.0 + 0.5 * lam * (1.0 + math.cos(math.pi * u / end))
    if schedule == "linear":
        return 1.0 + lam * (1.0 - u / end)
    return 1.0 + lam  # step


def alpha_img(u: float, lam: float = DEFAULT_LAMBDA_IMG, schedule: str = "cosine",
              start: float = DEFAULT_IMG_WINDOW_START) -> float:
    """Late reference-image boost α_img(u) (UniVid eq. 5): neutral until ``start``, peak 1+λ at u=1."""
    u = _check(schedule, lam, u)
    if schedule == "off" or lam == 0.0:
        return 1.0
    if schedule == "constant":
        return 1.0 + lam
    if start >= 1.0 or u <= start:
        return 1.0
    x = (u - start) / (1.0 - start)
    if schedule == "cosine":
        return 1.0 + 0.5 * lam * (1.0 - math.cos(math.pi * x))
    if schedule == "linear":
        return 1.0 + lam * x
    return 1.0 + lam  # step


DEFAULT_TACA_GAMMA = 1.2
DEFAULT_TACA_UNTIL = 0.1   # TACA: the first 3 of 30 steps


def taca_gamma(u: float, gamma: float = DEFAULT_TACA_GAMMA, until: float = DEFAULT_TACA_UNTIL) -> float:
    """TACA (Lv et al. 2025): image-query × text-key logits × γ while progress u < ``until``, else 1
    (γ = 1.2 for the first 3 of 30 steps: until = 0.1)."""
    if gamma <= 0:
        raise ValueError(f"γ must be > 0 (got {gamma})")
    return float(gamma) if u < until - 1e-9 else 1.0
