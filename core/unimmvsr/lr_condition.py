"""The LR condition of UniMMVSR (§3.2): the clean low-resolution latent the guider noises to the augmentation
timestep, with the VAE compression it was encoded with — shared by the nodes, the trainer's validation and the
samplers."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LRCondition:
    latent: torch.Tensor        # [1, C, T, H/s, W/s]: the clean VAE latent (raw, not normalised, not noised)
    aug_t: float                # augmentation timestep, 0…1000
    seed: int = 0               # seed of the augmentation noise
    spatial_factor: int = 8     # the VAE's spatial compression (8: Wan 2.1, 16: Wan 2.2)
    temporal_factor: int = 4    # the VAE's temporal compression (frames = (latent frames − 1)·t + 1)
    space_to_depth: int = 0     # the space-to-depth VAE's factor (its latent flips exactly: self-ensemble); 0 = other


def vae_factors(vae) -> tuple[int, int]:
    """(spatial, temporal) compression of a ComfyUI VAE, read from the VAE itself (never Wan 2.1 constants)."""
    spatial = int(vae.spacial_compression_encode())
    temporal = vae.temporal_compression_decode()
    return spatial, int(temporal or 1)
