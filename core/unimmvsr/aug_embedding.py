"""The augmentation-timestep micro-condition (UniMMVSR §3.2 "Noise augmentation"; docs/design.md §2).

t_aug (0…1000) → the same 1-D sinusoid Wan uses for its timestep (cos | sin halves, base 10000) → Linear → SiLU
→ Linear, added to the timestep embedding. The last layer starts at zero, so an upscaler initialised from a
T2V checkpoint predicts exactly what its parent predicts.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def sinusoid(dim: int, position: torch.Tensor) -> torch.Tensor:
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=position.device) / half)
    angles = torch.outer(position.to(torch.float64), freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class AugmentationEmbedding(nn.Module):
    def __init__(self, freq_dim: int, dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = nn.Linear(freq_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def zero_init(self) -> "AugmentationEmbedding":
        nn.init.zeros_(self.linear_2.weight)
        nn.init.zeros_(self.linear_2.bias)
        return self

    def forward(self, t_aug: torch.Tensor) -> torch.Tensor:
        x = sinusoid(self.freq_dim, t_aug.flatten()).to(self.linear_1.weight.dtype)
        return self.linear_2(torch.nn.functional.silu(self.linear_1(x)))
