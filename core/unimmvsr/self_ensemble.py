"""Geometric self-ensemble of the upscaler at inference (not in UniMMVSR: the "+" of EDSR+, Lim et al. 2017 §4.4).

The model runs on flipped / transposed copies of its input — the noisy latent, the LR condition and the references,
all transformed alike — each output is transformed back, and the outputs are averaged. A model trained with these
flips (``[data] augmentations``) gives nearly the same answer each time; the average keeps what they share and
cancels part of what they do not. It costs one pass per copy. Exact only in a latent whose cells flip like pixels
(the lossless space-to-depth autoencoder, core.autoencoders.space_to_depth); a Wan VAE's latent does not.
"""
from __future__ import annotations

import torch

from ..autoencoders.space_to_depth import dihedral_latent

#: the copies of each ensemble, as the ops applied in order (the first copy is the input itself)
ENSEMBLES: dict[str, tuple[tuple[str, ...], ...]] = {
    "hflip x2": ((), ("hflip",)),
    "flips x4": ((), ("hflip",), ("vflip",), ("hflip", "vflip")),
    "flips + transpose x8": ((), ("hflip",), ("vflip",), ("hflip", "vflip"),
                             ("transpose",), ("hflip", "transpose"), ("vflip", "transpose"),
                             ("hflip", "vflip", "transpose")),
}


def forward(latent: torch.Tensor, ops: tuple[str, ...], factor: int) -> torch.Tensor:
    """A raw latent [B, C, T, h, w] as the copy ``ops`` sees it."""
    for op in ops:
        latent = dihedral_latent(latent, op, factor)
    return latent


def inverse(latent: torch.Tensor, ops: tuple[str, ...], factor: int) -> torch.Tensor:
    """A copy's output back in the input's frame (each op is its own inverse: undo them in reverse order)."""
    for op in reversed(ops):
        latent = dihedral_latent(latent, op, factor)
    return latent


def swaps_axes(ops: tuple[str, ...]) -> bool:
    """Whether a copy's height and width are the input's width and height."""
    return "transpose" in ops
