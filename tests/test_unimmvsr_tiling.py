"""Tiled UniMMVSR sampling against untiled sampling on the same noise: close, and without seams."""
import pytest
import torch

from core.unimmvsr import tiling
from test_unimmvsr_model import unimmvsr  # noqa: F401  (module fixture: the upscaler)

TILE_PX, OVERLAP_PX = 96, 32          # 12×12 latent tiles, 4 latent overlap
H, W = 16, 28                          # latent 16×28 (128×224 px): 2 rows × 3 columns of tiles


def sample(pack, model, tile, frames=2, chunk=(0, 4)):
    import comfy.samplers

    guider_node = pack("nodes.unimmvsr_guider").UniMMVSRGuiderNode
    LRCondition = pack("core.unimmvsr.lr_condition").LRCondition
    g = torch.Generator().manual_seed(7)
    lr = LRCondition(torch.randn(1, 16, frames, H, W, generator=g) * 0.5, 200.0)
    positive = [[torch.randn(1, 12, 4096, generator=g), {}]]
    negative = [[torch.randn(1, 12, 4096, generator=g), {}]]
    args = (TILE_PX, TILE_PX) if tile else (0, 0)
    guider = guider_node.execute(model, positive, negative, lr, 3.0, 0.0, 0, *args, OVERLAP_PX, *chunk).result[0]
    noise = torch.randn(1, 16, frames, H, W, generator=g)
    sigmas = torch.linspace(1.0, 0.0, 5)
    return guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), sigmas, seed=0)


def test_tiled_close_to_untiled_and_seamless(pack, unimmvsr):  # noqa: F811
    untiled = sample(pack, unimmvsr, False)
    tiled = sample(pack, unimmvsr, True)
    rel = ((tiled - untiled).norm() / untiled.norm()).item()
    assert rel < 0.05, rel  # stated bound: tiles see less context than the whole frame
    # seams: where tiles differ from the untiled result, that difference must not jump at the columns/rows where
    # a tile starts or ends (a hard cut would put all of its change there): the gradient energy of the
    # difference across tile borders is not above its energy elsewhere
    xs = set(tiling.starts(W, 12, 4)[1:]) | {s + 12 for s in tiling.starts(W, 12, 4)[:-1]}
    ys = set(tiling.starts(H, 12, 4)[1:]) | {s + 12 for s in tiling.starts(H, 12, 4)[:-1]}
    diff = tiled - untiled
    gx = (diff[..., 1:] - diff[..., :-1]).abs().mean(dim=(0, 1, 2, 3))
    gy = (diff[..., 1:, :] - diff[..., :-1, :]).abs().mean(dim=(0, 1, 2, 4))
    border_x = torch.stack([gx[c - 1] for c in xs]).mean()
    border_y = torch.stack([gy[r - 1] for r in ys]).mean()
    inner_x = torch.stack([gx[c - 1] for c in range(1, W) if c not in xs]).mean()
    inner_y = torch.stack([gy[r - 1] for r in range(1, H) if r not in ys]).mean()
    print(f"relative difference tiled/untiled {rel:.3f}; border/interior gradient x {border_x / inner_x:.3f}, "
          f"y {border_y / inner_y:.3f}")
    assert border_x <= 1.25 * inner_x and border_y <= 1.25 * inner_y


def test_temporal_chunks_close_to_untiled(pack, unimmvsr):  # noqa: F811
    """4 latent frames (13 video frames) in chunks of 2 latent frames (5 frames) overlapping by 1 (4 frames)."""
    whole = sample(pack, unimmvsr, False, frames=4)
    chunked = sample(pack, unimmvsr, False, frames=4, chunk=(5, 4))
    rel = ((chunked - whole).norm() / whole.norm()).item()
    assert 0 < rel < 0.05, rel


def test_lr_and_sampled_latent_must_match(pack, unimmvsr):  # noqa: F811
    import comfy.samplers

    LRCondition = pack("core.unimmvsr.lr_condition").LRCondition
    cond = [[torch.randn(1, 12, 4096), {}]]
    guider = pack("nodes.unimmvsr_guider").UniMMVSRGuiderNode.execute(
        unimmvsr, cond, cond, LRCondition(torch.zeros(1, 16, 3, 8, 8), 600.0), 3.0, 0.0, 0, 0, 0, 16, 0, 4).result[0]
    noise = torch.randn(1, 16, 2, 8, 8)
    with pytest.raises(ValueError, match="the LR condition is \\(3, 8, 8\\).*latent being sampled is \\(2, 8, 8\\)"):
        guider.sample(noise, torch.zeros_like(noise), comfy.samplers.sampler_object("euler"), torch.linspace(1, 0, 3))
