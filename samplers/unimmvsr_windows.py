"""One UniMMVSR window evaluation (A.3 eq. 2–3 on one tile × chunk), shared by the guider on rank 0 and by the
multi-GPU workers, so every rank computes a window the same way.

Per window: the full condition (text + references), the text-free one (∅_txt + references) and, while s_ref is
on and references exist, the reference-free one (text, no references) — then ``guidance.combine``. The window's
slice of the model-space LR condition goes in through ``c_concat``; its feather weight comes from
``core.unimmvsr.tiling``.
"""
from __future__ import annotations

import comfy.conds
import comfy.samplers
import torch

from ..core.unimmvsr import guidance, tiling
from ..core.unimmvsr.forward import ReferenceTokens, reference_tokens
from .unimmvsr_model import AUG_T_KEY, REFERENCES_KEY


class WindowEvaluator:
    """Evaluates windows of one latent ``shape`` [B, C, T, H, W] with fixed conditions, references and scales."""

    def __init__(self, inner_model, positive: list, negative: list, condition: torch.Tensor, references: list,
                 config, aug_t: float, text_scale: float, tile: tuple[int, int, int] | None,
                 overlap: tuple[int, int, int], shape):
        self.inner_model = inner_model
        self.positive, self.negative = positive, negative
        self.condition = condition                  # model-space, noised LR condition [B, C, T, H, W]
        self.references = references                # [(category, raw latent)]
        self.config = config
        self.aug_t = aug_t
        self.text_scale = text_scale
        self.tile, self.overlap = tile, overlap
        self.shape = tuple(shape)
        self._tokens: dict[int, ReferenceTokens | None] = {}

    def windows(self) -> list[tiling.Window]:
        _, _, frames, height, width = self.shape
        if self.tile is None:
            return [tiling.Window(0, frames, 0, height, 0, width)]
        tf, th, tw = self.tile
        of, oh, ow = self.overlap
        return tiling.windows(frames, height, width, min(tf, frames), min(th, height), min(tw, width), of, oh, ow)

    def weights(self, win: tiling.Window) -> torch.Tensor:
        _, _, frames, height, width = self.shape
        if self.tile is None:
            return torch.ones(win.t1 - win.t0, win.y1 - win.y0, win.x1 - win.x0)
        return tiling.weights(win, frames, height, width, *self.overlap)

    def reference_tokens(self, frames: int) -> ReferenceTokens | None:
        """The references laid out for a window of ``frames`` latent frames (computed once per frame count)."""
        if frames not in self._tokens:
            self._tokens[frames] = reference_tokens(list(self.references), frames, self.config.id_start,
                                                    self.config.video_start, self.inner_model.process_latent_in)
        return self._tokens[frames]

    def _window_conds(self, conds, win: tiling.Window) -> list:
        t, y, x = win.slices()
        out = []
        for c in conds:
            c = dict(c)
            model_conds = dict(c["model_conds"])
            model_conds["c_concat"] = comfy.conds.CONDNoiseShape(self.condition[:, :, t, y, x])
            c["model_conds"] = model_conds
            out.append(c)
        return out

    def evaluate(self, win: tiling.Window, x: torch.Tensor, timestep, model_options: dict,
                 s_ref: float) -> tuple[torch.Tensor, int]:
        """The guided prediction of one window and the number of model evaluations it took."""
        t, y, xx = win.slices()
        x_w = x[:, :, t, y, xx]
        refs = self.reference_tokens(win.t1 - win.t0)

        def run(conds, with_refs: bool):
            options = dict(model_options)
            to = dict(options.get("transformer_options", {}))
            to[AUG_T_KEY] = self.aug_t
            to[REFERENCES_KEY] = refs if with_refs else None
            options["transformer_options"] = to
            return comfy.samplers.calc_cond_batch(self.inner_model, [self._window_conds(conds, win)], x_w, timestep,
                                                  options)[0]

        full = run(self.positive, True)
        no_text = run(self.negative, True)
        no_ref = run(self.positive, False) if s_ref != 0.0 else None
        return guidance.combine(full, no_text, no_ref, self.text_scale, s_ref), 3 if no_ref is not None else 2
