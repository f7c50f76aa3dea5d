"""MfM's light condition adapter (paper §3.1, Fig. 2; official ``light_adapter.py``; docs/design.md §9).

Input: the unified 3D condition [B, 5, T, H, W] with channels R, G, B, depth, mask (RGB in [−1, 1] already
multiplied by the mask; mask 1 = known). ``conv_in`` (2D, 5→16) then pairs of (channel-keeping 3×3 conv,
stride-2 downsampling conv) over channels 16→32→96→256→512; the downsamplers ``blocks.1`` and ``blocks.5`` are
3D (stride 2 in T, H, W) and ``blocks.3``, ``blocks.7`` 2D; SiLU after every conv but ``conv_out`` (512→hidden).
2D convs run per frame. The result lies on the DiT's token grid — T = 1+4k → 1+k, H and W ÷ 16 (VAE 8 ×
patch 2) — and is added to the patch embedding. In the MfM transformer this module's keys sit under
``cond_conv.``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

CONDITION_CHANNELS = 5
BLOCK_CHANNELS = (16, 32, 96, 256, 512)


class LightAdapter(nn.Module):
    def __init__(self, hidden_size: int, in_channels: int = CONDITION_CHANNELS,
                 block_channels: tuple[int, ...] = BLOCK_CHANNELS, operations=None, device=None, dtype=None):
        super().__init__()
        ops = operations or nn   # a host's casting layers (ComfyUI's lowvram path streams these weights)
        kw = dict(device=device, dtype=dtype)
        self.conv_in = ops.Conv2d(in_channels, block_channels[0], kernel_size=3, padding=1, **kw)
        blocks = []
        for i, (c_in, c_out) in enumerate(zip(block_channels[:-1], block_channels[1:])):
            blocks.append(ops.Conv2d(c_in, c_in, kernel_size=3, padding=1, **kw))
            down = ops.Conv3d if i % 2 == 0 else ops.Conv2d
            blocks.append(down(c_in, c_out, kernel_size=3, padding=1, stride=2, **kw))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = ops.Conv2d(block_channels[-1], hidden_size, kernel_size=3, padding=1, **kw)

    @staticmethod
    def token_grid(frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The (t, h, w) grid an input of this size maps to; raises for sizes the adapter cannot take."""
        if frames < 1 or (frames - 1) % 4:
            raise ValueError(f"the MfM condition needs 4n+1 frames, got {frames}")
        if height % 16 or width % 16:
            raise ValueError(f"the MfM condition needs multiples of 16, got {width}×{height}")
        return (frames - 1) // 4 + 1, height // 16, width // 16

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = condition.shape
        self.token_grid(t, h, w)
        x = F.silu(self.conv_in(condition.movedim(2, 1).reshape(b * t, c, h, w)))
        for block in self.blocks:
            if isinstance(block, nn.Conv3d):  # [(b t), c, h, w] → [b, c, t, h, w] → conv → back
                x = block(x.reshape(b, t, *x.shape[1:]).movedim(1, 2))
                t = x.shape[2]
                x = x.movedim(2, 1).flatten(0, 1)
            else:
                x = block(x)
            x = F.silu(x)
        x = self.conv_out(x)
        return x.reshape(b, t, *x.shape[1:]).movedim(1, 2)
