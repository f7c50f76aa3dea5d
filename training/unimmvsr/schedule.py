"""Learning rate of an optimizer step: constant (the paper's AdamW 1e-4, §4.1) or linear warm-up then cosine decay.

A pure function of the step, so a resumed run sets exactly the rate an uninterrupted one would (no scheduler state
to save) and a run cut short with ``--stop-after`` follows the full run's curve.
"""
from __future__ import annotations

import math


def learning_rate_at(step: int, total_steps: int, peak: float, schedule: str = "constant", warmup_steps: int = 0,
                     final_ratio: float = 0.0) -> float:
    """Rate for the optimizer step with 0-based index ``step``.

    Warm-up: ``peak · (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps. Then ``constant`` keeps
    ``peak``; ``cosine`` falls from ``peak`` to ``final_ratio · peak`` at the last step along half a cosine.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (constant or cosine)")
    span = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = final_ratio * peak
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
