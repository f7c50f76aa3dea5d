"""Sampling UniMMVSR: independent text/reference CFG with the reference guidance threshold (A.3, eq. 2–3), the
noise-augmented LR condition and its micro-condition (§3.2), and tiled denoising for 4K (docs/design.md §3–4).

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
- Window execution is a strategy the guider is given (``with_execution``): ``LocalWindows`` (this process; the
  default), ``SelfEnsembleWindows`` and the multi-GPU one (distributed/session.py ``MultiGPUWindows``). A strategy
  holds settings only; ``open`` makes the state of one sampler call, which ``predict`` and ``close`` use.
- Self-ensemble (the UniMMVSR Self-Ensemble node): each step runs on flipped/transposed copies
  of the latent, the LR condition and the references and averages the outputs flipped back
  (core.unimmvsr.self_ensemble). The flips are pixel flips, exact in the space-to-depth latent; the sampled latent
  moves through the latent format's process_latent_out/in, which is exact when sampling starts from the LR (checked
  when sampling starts), the LR condition is flipped clean and noised with flipped noise.
- Several ranks (the UniMMVSR Multi-GPU node): the windows of a step are shared among
  torch.distributed ranks (distributed/pool.py); the blend is the same Σ w·x̂ / Σ w, reduced once per step.
"""
from __future__ import annotations

import copy
import json
import logging
import os

import comfy.samplers
import comfy.utils
import torch

from ..core.attention.progress import progress_from_sigma
from ..core.unimmvsr import augmentation, guidance, self_ensemble, tiling
from .attention_boost import TRACE_ENV
from .unimmvsr_windows import WindowEvaluator

log = logging.getLogger("UniCascade")


class LocalWindows:
    """Every window of every step evaluated in this process, for the input and each self-ensemble copy (``copies``,
    core.unimmvsr.self_ensemble; ((),) = the input alone), the copies averaged in the input's frame."""

    label = "one process"

    def __init__(self, copies: tuple = ((),)):
        self.copies = tuple(copies)

    def open(self, guider, noise: torch.Tensor) -> "LocalRun":
        if len(self.copies) > 1:
            guider.check_self_ensemble(noise)
        return LocalRun(guider, self.copies)


class SelfEnsembleWindows(LocalWindows):
    """The self-ensemble: the input's windows and those of its flipped/transposed copies, averaged."""

    label = "UniMMVSR Self-Ensemble"


class LocalRun:
    """One sampler call of ``LocalWindows``."""

    def __init__(self, guider, copies: tuple):
        self.guider, self.copies = guider, copies

    def predict(self, x, timestep, model_options: dict, sigma: float, u: float, s_ref: float) -> torch.Tensor:
        guider, total = self.guider, None
        for ops in self.copies:
            x_copy = guider.to_copy(x, ops) if ops else x
            out = guider.denoise_windows(guider.evaluator(x_copy.shape, ops), x_copy, timestep, model_options, sigma,
                                         u, s_ref, ops)
            out = guider.from_copy(out, ops) if ops else out
            total = out if total is None else total + out
        return total / len(self.copies)

    def close(self) -> None:
        pass


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
        self.execution = LocalWindows()
        self.progress = None
        self._condition = None
        self._evaluators = {}
        self._run = None
        self.last_run = None
        self.trace = os.environ.get(TRACE_ENV) or None

    @property
    def copies(self) -> tuple:
        """The self-ensemble copies each step evaluates (((),) = the input alone)."""
        return self.execution.copies

    def with_execution(self, execution) -> "UniMMVSRGuider":
        """A copy of this guider whose windows run through ``execution`` (the cached input guider is untouched).
        Strategies do not stack: a guider given one already refuses another."""
        if type(self.execution) is not LocalWindows or len(self.execution.copies) > 1:
            raise ValueError(f"guider: it already runs through {self.execution.label}, which cannot be combined with "
                             f"{execution.label} yet: use one")
        out = copy.copy(self)
        out.execution, out._evaluators, out._run, out.last_run = execution, {}, None, None
        return out

    def sample(self, *args, **kwargs):
        # one progress bar and one set of conditions per sampler call (a cached guider serves several prompts)
        self.progress, self._evaluators = None, {}
        self._run = self.execution.open(self, kwargs["noise"] if "noise" in kwargs else args[0])
        try:
            return super().sample(*args, **kwargs)
        finally:
            self._run.close()                   # multi-GPU: hands the pool back (a release asked for meanwhile runs)
            self.last_run, self._run, self._evaluators = self._run, None, {}   # timings and byte counts (benchmarks)

    # -- the LR condition in the model's latent space, noised there (once per guider) --------------------
    def model_space_condition(self, ops: tuple[str, ...] = ()) -> torch.Tensor:
        """The LR condition normalised into the model's space, then noised. For a self-ensemble copy ``ops``: the
        flipped clean latent noised with the flipped augmentation noise (a flip only moves Gaussian entries, so the
        copy is a draw of the same forward process)."""
        if ops or self._condition is None:
            raw, factor = self.lr_condition.latent, self.lr_condition.space_to_depth
            noise = augmentation.augmentation_noise(raw.shape, self.lr_condition.seed)
            condition = augmentation.lr_condition(self_ensemble.forward(raw, ops, factor),
                                                  self.inner_model.process_latent_in, self.lr_condition.aug_t,
                                                  self_ensemble.forward(noise, ops, factor))
            if ops:
                return condition
            self._condition = condition
        return self._condition

    def evaluator(self, shape, ops: tuple[str, ...] = ()) -> WindowEvaluator:
        """The window evaluator of a latent shape, for the self-ensemble copy ``ops`` (() = the input itself): its LR
        condition and references flipped alike, its tiles transposed with it."""
        current = self._evaluators.get(ops)
        if current is None or current.shape != tuple(shape):
            factor = self.lr_condition.space_to_depth
            references = [(r.category, self_ensemble.forward(r.latent, ops, factor)) for r in self.references]
            tile, overlap = self.tile, self.overlap
            if self_ensemble.swaps_axes(ops):
                tile = tile and (tile[0], tile[2], tile[1])
                overlap = (overlap[0], overlap[2], overlap[1])
            current = self._evaluators[ops] = WindowEvaluator(
                self.inner_model, self.conds.get("positive"), self.conds.get("negative"),
                self.model_space_condition(ops), references,
                self.config, self.lr_condition.aug_t, self.text_scale, tile, overlap, shape)
        return current

    # -- self-ensemble copies, in the model's latent space ------------------------------------------------
    def to_copy(self, x: torch.Tensor, ops: tuple[str, ...]) -> torch.Tensor:
        """A model-space latent as the copy ``ops`` sees it: un-normalised, flipped, normalised again. Exact for
        every affine combination of clean latents — all the latents a sampler makes when it starts from the LR."""
        m = self.inner_model
        return m.process_latent_in(self_ensemble.forward(m.process_latent_out(x), ops,
                                                         self.lr_condition.space_to_depth))

    def from_copy(self, x: torch.Tensor, ops: tuple[str, ...]) -> torch.Tensor:
        """A copy's model-space prediction back in the input's frame (``to_copy`` undone)."""
        m = self.inner_model
        return m.process_latent_in(self_ensemble.inverse(m.process_latent_out(x), ops,
                                                         self.lr_condition.space_to_depth))

    def check_self_ensemble(self, noise: torch.Tensor) -> None:
        """Refuses copies that would not be exact. A latent format that normalises each channel with its own mean
        and std (Wan 2.2's) maps a flip of the clean latent to an affine map of the model's latent; that map is
        right for clean latents and their affine combinations — every latent of a sampling run that starts from the
        LR (UniMMVSR Start From LR) — but would rescale Gaussian noise channel by channel."""
        base, factor = self.model_patcher.model, self.lr_condition.space_to_depth
        probe = torch.randn(*self.lr_condition.latent.shape[:2], 1, 2, 2, generator=torch.Generator().manual_seed(0))
        commutes = all(torch.allclose(base.process_latent_in(self_ensemble.forward(base.process_latent_out(probe), ops,
                                                                                   factor)),
                                      self_ensemble.forward(probe, ops, factor), atol=1e-5) for ops in self.copies)
        start = base.process_latent_in(self.lr_condition.latent.float())
        from_lr = (tuple(noise.shape) == tuple(start.shape)
                   and torch.allclose(noise.float().cpu(), start.cpu(), atol=1e-4))
        if not (commutes or from_lr):
            raise ValueError("UniMMVSR Self-Ensemble: this model's latent format normalises each channel with its own "
                             "mean and std, so a flipped copy of Gaussian noise would be rescaled channel by channel; "
                             "the copies are exact when sampling starts from the LR: connect UniMMVSR Start From LR "
                             "to the sampler's noise")

    def _progress(self, timestep) -> tuple[float, float]:
        sigma = float(timestep.flatten().max())
        return sigma, progress_from_sigma(sigma, self.inner_model.model_sampling.percent_to_sigma)

    def record(self, **fields) -> None:
        if self.trace:
            with open(self.trace, "a", encoding="utf-8") as f:
                f.write(json.dumps(fields) + "\n")

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        if tuple(x.shape[2:]) != tuple(self.lr_condition.latent.shape[2:]):
            raise ValueError(f"the LR condition is {tuple(self.lr_condition.latent.shape[2:])} (latent frames, height, "
                             f"width) but the latent being sampled is {tuple(x.shape[2:])}: make the empty latent "
                             f"with the upsampler's size and frame count")
        sigma, u = self._progress(timestep)
        s_ref = self.reference_scale if self.references and guidance.reference_on(u, self.reference_end) else 0.0
        evaluator = self.evaluator(x.shape)
        wins = evaluator.windows()
        if self.progress is None:
            steps = max(1, len(model_options.get("transformer_options", {}).get("sample_sigmas", [0, 0])) - 1)
            self.progress = comfy.utils.ProgressBar(steps * len(wins) * len(self.copies))
        return self._run.predict(x, timestep, model_options, sigma, u, s_ref).to(x.dtype)

    def denoise_windows(self, evaluator: WindowEvaluator, x, timestep, model_options: dict, sigma: float, u: float,
                        s_ref: float, ops: tuple[str, ...]) -> torch.Tensor:
        """One guided prediction of the whole latent: every window evaluated, blended with its feather weights."""
        blend = tiling.Blender(x.shape, dtype=torch.float32, device=x.device)
        for win in evaluator.windows():
            out, evaluations = evaluator.evaluate(win, x, timestep, model_options, s_ref)
            blend.add(win, out, evaluator.weights(win))
            self.record(event="unimmvsr", sigma=sigma, u=u, window=[win.t0, win.y0, win.x0],
                        window_size=[win.t1 - win.t0, win.y1 - win.y0, win.x1 - win.x0], evaluations=evaluations,
                        s_ref=s_ref, rank=0, **({"copy": list(ops)} if len(self.copies) > 1 else {}))
            self.progress.update(1)
        return blend.result()
