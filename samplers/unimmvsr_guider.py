"""Sampling UniMMVSR: independent text/reference CFG with the reference guidance threshold (A.3, eq. 2–3), the
noise-augmented LR condition and its micro-condition (§3.2), and tiled denoising for 4K (SPEC §1).

Each step evaluates, per window, the full condition (text + references), the text-free one (∅_txt + references)
and — while s_ref is on and references exist — the reference-free one (text, no references): three evaluations,
then two. The three are separate model calls because a reference-free sequence is shorter.

- The reference threshold is a point of the *whole* denoising trajectory: s_ref is on while the progress u < the
  reference end (paper: N_ref = 15 of 50 steps = 0.30), with u computed from each call's σ through the model's own
  σ schedule (core.attention.progress, as the TMA node does), so it holds under SplitSigmas, several samplers and
  denoise < 1.
- The LR condition reaches ``patch_embedding`` through ComfyUI's ``c_concat``; this guider writes it already in the
  model's latent space and noised there (core.unimmvsr.augmentation.lr_condition, the function the trainer uses).
- Windows: the whole latent, or spatial tiles × temporal chunks blended with feathered weights
  (core.unimmvsr.tiling); each window carries its slice of the LR condition and all reference tokens, so memory is
  bounded by the window. A ProgressBar counts windows × steps (it is also where Stop takes effect).
"""
from __future__ import annotations

import json
import logging
import os

import comfy.conds
import comfy.samplers
import comfy.utils
import torch

from ..core.attention.progress import progress_from_sigma
from ..core.unimmvsr import augmentation, guidance, tiling
from ..core.unimmvsr.forward import ReferenceTokens, reference_tokens
from .attention_boost import TRACE_ENV
from .unimmvsr_model import AUG_T_KEY, REFERENCES_KEY

log = logging.getLogger("UniCascade")

class UniMMVSRGuider(comfy.samplers.CFGGuider):
    def configure(self, *, lr_condition, references: list | None, text_scale: float, reference_scale: float,
                  reference_end: float, config, tile: tuple[int, int, int] | None, overlap: tuple[int, int, int]):
        self.lr_condition = lr_condition
        self.references = references or []
        self.text_scale = text_scale
        self.reference_scale = reference_scale
        self.reference_end = reference_end
        self.config = config
        self.tile = tile
        self.overlap = overlap
        self.progress = None
        self._condition = None
        self.trace = os.environ.get(TRACE_ENV) or None

    def sample(self, *args, **kwargs):
        self.progress = None  # one progress bar per sampler call (a cached guider serves several prompts)
        return super().sample(*args, **kwargs)

    # -- the LR condition in the model's latent space, noised there (once per guider) --------------------
    def model_space_condition(self) -> torch.Tensor:
        if self._condition is None:
            raw = self.lr_condition.latent
            noise = augmentation.augmentation_noise(raw.shape, self.lr_condition.seed)
            self._condition = augmentation.lr_condition(raw, self.inner_model.process_latent_in,
                                                        self.lr_condition.aug_t, noise)
        return self._condition

    # -- references in the model's latent space, laid out for a window of ``frames`` latent frames -------
    def _reference_tokens(self, frames: int) -> ReferenceTokens | None:
        return reference_tokens([(r.category, r.latent) for r in self.references], frames, self.config.id_start,
                                self.config.video_start, self.inner_model.process_latent_in)

    def _window_conds(self, conds, window):
        condition = self.model_space_condition()
        t, y, x = window.slices()
        out = []
        for c in conds:
            c = dict(c)
            model_conds = dict(c["model_conds"])
            model_conds["c_concat"] = comfy.conds.CONDNoiseShape(condition[:, :, t, y, x])
            c["model_conds"] = model_conds
            out.append(c)
        return out

    def _progress(self, timestep) -> tuple[float, float]:
        sigma = float(timestep.flatten().max())
        return sigma, progress_from_sigma(sigma, self.inner_model.model_sampling.percent_to_sigma)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        positive, negative = self.conds.get("positive"), self.conds.get("negative")
        if tuple(x.shape[2:]) != tuple(self.lr_condition.latent.shape[2:]):
            raise ValueError(f"the LR condition is {tuple(self.lr_condition.latent.shape[2:])} (latent frames, height, "
                             f"width) but the latent being sampled is {tuple(x.shape[2:])}: make the empty latent "
                             f"with the upsampler's size and frame count")
        sigma, u = self._progress(timestep)
        s_ref = self.reference_scale if self.references and guidance.reference_on(u, self.reference_end) else 0.0
        b, c, frames, height, width = x.shape
        if self.tile is None:
            wins = [tiling.Window(0, frames, 0, height, 0, width)]
        else:
            tf, th, tw = self.tile
            of, oh, ow = self.overlap
            wins = tiling.windows(frames, height, width, min(tf, frames), min(th, height), min(tw, width), of, oh, ow)
        to_in = model_options.get("transformer_options", {})
        if self.progress is None:
            steps = max(1, len(to_in.get("sample_sigmas", [0, 0])) - 1)
            self.progress = comfy.utils.ProgressBar(steps * len(wins))
        blend = tiling.Blender(x.shape, dtype=torch.float32, device=x.device)
        for win in wins:
            t, y, xx = win.slices()
            x_w = x[:, :, t, y, xx]
            refs = self._reference_tokens(win.t1 - win.t0)

            def evaluate(conds, with_refs: bool):
                options = dict(model_options)
                to = dict(options.get("transformer_options", {}))
                to[AUG_T_KEY] = self.lr_condition.aug_t
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
                    f.write(json.dumps({"event": "unimmvsr", "sigma": sigma, "u": u, "window": [win.t0, win.y0, win.x0],
                                        "window_size": [win.t1 - win.t0, win.y1 - win.y0, win.x1 - win.x0],
                                        "evaluations": 3 if no_ref is not None else 2, "s_ref": s_ref}) + "\n")
            self.progress.update(1)
        return blend.result().to(x.dtype)
