"""Sampling UniMMVSR: independent text/reference CFG with the reference guidance threshold (A.3, eq. 2–3), the
augmentation micro-condition, and tiled denoising for 4K (SPEC §1).

Each step evaluates, per window, the full condition (text + references), the text-free one (negative prompt +
references) and — while s_ref is on (the first N_ref steps) and references exist — the reference-free one
(text, no references): three evaluations, then two. The three are separate model calls because a reference-free
sequence is shorter. Windows: the whole latent, or spatial tiles × temporal chunks blended with feathered
weights (core.unimmvsr.tiling); each window carries its slice of the LR condition and all reference tokens, so
memory is bounded by the window. A ProgressBar counts windows × steps (it is also where Stop takes effect).
"""
from __future__ import annotations

import json
import logging
import os

import torch

from ..core.unimmvsr import guidance, tiling
from ..core.unimmvsr.reference_layout import ReferenceLayout, layout
from .attention_boost import TRACE_ENV
from .unimmvsr_model import AUG_T_KEY, REFERENCES_KEY, ReferenceTokens

log = logging.getLogger("UniCascade")


def make_guider_class():
    import comfy.conds
    import comfy.samplers
    import comfy.utils

    class UniMMVSRGuider(comfy.samplers.CFGGuider):
        def configure(self, *, lr_latent: torch.Tensor, aug_t: float, references: list | None, text_scale: float,
                      reference_scale: float, reference_steps: int, config, tile: tuple[int, int, int] | None,
                      overlap: tuple[int, int, int]):
            self.lr_latent = lr_latent
            self.aug_t = aug_t
            self.references = references or []
            self.text_scale = text_scale
            self.reference_scale = reference_scale
            self.reference_steps = reference_steps
            self.config = config
            self.tile = tile
            self.overlap = overlap
            self.progress = None
            self.trace = os.environ.get(TRACE_ENV) or None

        # -- references in the model's latent space, laid out for a window of ``frames`` latent frames -----
        def _reference_tokens(self, frames: int) -> ReferenceTokens | None:
            if not self.references:
                return None
            model = self.inner_model
            ids = [r for r in self.references if r.category == "id_image"]
            videos = [r for r in self.references if r.category == "reference_video"]
            lay: ReferenceLayout = layout(frames, [r.latent.shape[2] for r in ids], [r.latent.shape[2] for r in videos],
                                          self.config.id_start, self.config.video_start)
            latent = torch.cat([model.process_latent_in(r.latent) for r in ids + videos], dim=2)
            return ReferenceTokens(latent=latent, layout=lay)

        def _window_conds(self, conds, window):
            out = []
            for c in conds:
                c = dict(c)
                model_conds = dict(c["model_conds"])
                concat = model_conds.get("c_concat")
                if concat is not None:
                    t, y, x = window.slices()
                    model_conds["c_concat"] = comfy.conds.CONDNoiseShape(concat.cond[:, :, t, y, x])
                c["model_conds"] = model_conds
                out.append(c)
            return out

        def _step_index(self, timestep, model_options) -> int:
            sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
            if sigmas is None:
                return 0
            sigma = float(timestep.flatten().max())
            diffs = (sigmas[:-1].float() - sigma).abs()
            return int(torch.argmin(diffs))

        def predict_noise(self, x, timestep, model_options={}, seed=None):
            positive, negative = self.conds.get("positive"), self.conds.get("negative")
            if tuple(x.shape[2:]) != tuple(self.lr_latent.shape[2:]):
                raise ValueError(f"the LR condition is {tuple(self.lr_latent.shape[2:])} (latent frames, height, "
                                 f"width) but the latent being sampled is {tuple(x.shape[2:])}: make the empty latent "
                                 f"with the upsampler's size and frame count")
            step = self._step_index(timestep, model_options)
            s_ref = guidance.reference_scale_at(step, self.reference_scale, self.reference_steps) \
                if self.references else 0.0
            b, c, frames, height, width = x.shape
            if self.tile is None:
                wins = [tiling.Window(0, frames, 0, height, 0, width)]
            else:
                tf, th, tw = self.tile
                of, oh, ow = self.overlap
                wins = tiling.windows(frames, height, width, min(tf, frames), min(th, height), min(tw, width),
                                      of, oh, ow)
            if self.progress is None:
                steps = max(1, len(model_options.get("transformer_options", {}).get("sample_sigmas", [0, 0])) - 1)
                self.progress = comfy.utils.ProgressBar(steps * len(wins))
            blend = tiling.Blender(x.shape, dtype=torch.float32, device=x.device)
            for win in wins:
                t, y, xx = win.slices()
                x_w = x[:, :, t, y, xx]
                refs = self._reference_tokens(win.t1 - win.t0)

                def evaluate(conds, with_refs: bool):
                    options = dict(model_options)
                    to = dict(options.get("transformer_options", {}))
                    to[AUG_T_KEY] = self.aug_t
                    to[REFERENCES_KEY] = refs if with_refs else None
                    options["transformer_options"] = to
                    return comfy.samplers.calc_cond_batch(self.inner_model, [self._window_conds(conds, win)], x_w,
                                                          timestep, options)[0]

                full = evaluate(positive, True)
                no_text = evaluate(negative, True)
                no_ref = evaluate(positive, False) if s_ref != 0.0 else None
                out = guidance.combine(full, no_text, no_ref, self.text_scale, s_ref)
                w = tiling.weights(win, frames, height, width, *self.overlap) if self.tile else \
                    torch.ones(win.t1 - win.t0, win.y1 - win.y0, win.x1 - win.x0)
                blend.add(win, out, w)
                if self.trace:
                    with open(self.trace, "a", encoding="utf-8") as f:
                        f.write(json.dumps({"event": "unimmvsr", "step": step, "window": [win.t0, win.y0, win.x0],
                                            "evaluations": 3 if no_ref is not None else 2, "s_ref": s_ref}) + "\n")
                self.progress.update(1)
            return blend.result().to(x.dtype)

    return UniMMVSRGuider
