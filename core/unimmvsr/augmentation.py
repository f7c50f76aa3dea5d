"""Noise augmentation of the LR condition latent (UniMMVSR §3.2 "Noise augmentation"; SPEC §1).

The condition latent is noised by the forward flow process to an augmentation timestep t_aug ∈ [0, 1000]:
z = (1 − σ)·z_LR + σ·ε with σ = t_aug / 1000, and t_aug is given to the model as a micro-condition. Training draws
t_aug uniformly in [200, 600]; inference uses 600 for the reference tasks (stronger restoration) and 200 for
fidelity-first classic VSR.
"""
from __future__ import annotations

import torch

TRAIN_RANGE = (200, 600)
REFERENCE_TASKS = 600
FIDELITY = 200


def augment(latent: torch.Tensor, t_aug: float, generator: torch.Generator | None = None) -> torch.Tensor:
    if not 0 <= t_aug <= 1000:
        raise ValueError(f"augmentation timestep {t_aug} is outside [0, 1000]")
    sigma = float(t_aug) / 1000.0
    noise = torch.randn(latent.shape, generator=generator, dtype=torch.float32).to(latent)
    return (1.0 - sigma) * latent + sigma * noise
