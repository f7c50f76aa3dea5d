"""Noise augmentation of the LR condition latent (UniMMVSR §3.2 "Noise augmentation"; docs/design.md §2, §12).

The condition latent is noised by the forward flow process to an augmentation timestep t_aug ∈ [0, 1000]:
z = (1 − σ)·z_LR + σ·ε with σ = t_aug / 1000 and unit-variance ε, and t_aug is given to the model as a
micro-condition. Training draws t_aug uniformly in [200, 600]; inference uses 600 for the reference tasks
(stronger restoration) and 200 for fidelity-first classic VSR.

The forward process lives in the MODEL's latent space: z_LR is the VAE latent after the latent format's
normalisation (ComfyUI's ``process_latent_in``: per-channel mean/std), the space in which the backbone's own
noise is unit-variance. Noising the raw VAE latent and normalising afterwards would hand the model
(1 − σ)·z + σ·(ε − μ)/s — shifted noise of std 1/s, not the forward process at t_aug. ``lr_condition`` is the one
function the sampler (samplers/unimmvsr_guider.py) and the trainer both call.
"""
from __future__ import annotations

from typing import Callable

import torch

TRAIN_RANGE = (200, 600)
REFERENCE_TASKS = 600
FIDELITY = 200


def sigma_of(t_aug: float) -> float:
    if not 0 <= t_aug <= 1000:
        raise ValueError(f"augmentation timestep {t_aug} is outside [0, 1000]")
    return float(t_aug) / 1000.0


def augment(model_latent: torch.Tensor, t_aug: float, noise: torch.Tensor) -> torch.Tensor:
    """(1 − σ)·z + σ·ε for a latent already in the model's space and unit-variance noise of the same shape."""
    sigma = sigma_of(t_aug)
    if noise.shape != model_latent.shape:
        raise ValueError(f"noise {tuple(noise.shape)} does not match the latent {tuple(model_latent.shape)}")
    return (1.0 - sigma) * model_latent + sigma * noise.to(model_latent)


def augmentation_noise(shape, seed: int) -> torch.Tensor:
    """The augmentation noise for a seed: float32 standard normal from a CPU generator (device-independent)."""
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)


def lr_condition(raw_latent: torch.Tensor, process_latent_in: Callable[[torch.Tensor], torch.Tensor], t_aug: float,
                 noise: torch.Tensor) -> torch.Tensor:
    """The LR condition the backbone receives: the VAE latent normalised into the model's space, then noised."""
    return augment(process_latent_in(raw_latent.float()), t_aug, noise)
