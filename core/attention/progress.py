"""Where a model call sits in the denoising trajectory, as ``u`` ∈ [0, 1] (0 = first step, 1 = done).

Two sources, both computed from the σ of the call itself so that the conditional and unconditional batches of
one step always get the same value:

- ``progress_from_sigma``: global progress. It inverts the model's ``percent_to_sigma`` (ComfyUI's mapping from
  the fraction of the *whole* schedule to σ), so it is correct under split sampling (two samplers, Wan 2.2's
  high/low-noise experts), start/end steps of an advanced sampler and ``denoise < 1``.
- ``progress_from_schedule``: the fractional step index of σ within the current sampler call's own σ list
  (``i / (len − 1)``), interpolated linearly for the intermediate σ of multi-stage samplers.
"""
from __future__ import annotations

from typing import Callable, Sequence


def progress_from_sigma(sigma: float, percent_to_sigma: Callable[[float], float], iterations: int = 48) -> float:
    """Invert a monotonically decreasing ``percent_to_sigma`` by bisection on percent ∈ [0, 1]."""
    sigma = float(sigma)
    lo, hi = 0.0, 1.0
    if sigma >= float(percent_to_sigma(1e-9)):
        return 0.0
    if sigma <= float(percent_to_sigma(1.0 - 1e-9)):
        return 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if float(percent_to_sigma(mid)) > sigma:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def progress_from_schedule(sigma: float, schedule: Sequence[float]) -> float:
    """Fractional step index of ``sigma`` in a decreasing σ list (last entry usually 0), divided by its steps."""
    values = [float(s) for s in schedule]
    if len(values) < 2:
        return 0.0
    steps = len(values) - 1
    sigma = float(sigma)
    if sigma >= values[0]:
        return 0.0
    for i in range(steps):
        hi, lo = values[i], values[i + 1]
        if lo <= sigma <= hi:
            frac = 0.0 if hi == lo else (hi - sigma) / (hi - lo)
            return (i + frac) / steps
    return 1.0

