"""Installs a timestep-scheduled attention-logit boost on a cloned ComfyUI model (UniVid §2.3 TMA, TACA).

How it reaches the logits, through patch points Wan and Flux honour (docs/design.md §12), on every attention backend:

1. An APPLY_MODEL wrapper computes the boost once per model call from the call's own σ, so the conditional
   and unconditional batches of a step always share it, and stores it in ``transformer_options``.
2. Wan: every text cross-attention module gets an object patch of ``forward`` that tags the options it passes
   down as "cross-attention", with its image/text key counts (I2V/FLF2V modules make two attention calls: CLIP
   image keys, then text keys). Self-attention is never tagged, so it is never touched. A ``forward`` patch
   another pack put there first is wrapped, not replaced.
3. ``optimized_attention_override`` scales the logits of tagged calls (core.attention.logit_scaling) and then
   calls the override that was there before (another pack's sage/flash patch, say), or the host's attention.
   Applying the boost again replaces the earlier boost and keeps whatever other overrides were added since.
   When the next function in the chain is the pack's fused attention (UniCascade Attention node), α goes to it as
   a logit scale instead (its group table multiplies the logits inside the kernel).
4. If a model call sets α ≠ 1 but no tagged attention call was scaled (another override that does not chain
   replaced ours), the call fails with an error instead of silently doing nothing.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..core.attention.logit_scaling import scale_all_logits, scale_image_to_text_logits
from ..core.attention.progress import progress_from_schedule, progress_from_sigma
from .model_families import FLUX, MFM, WAN

WRAPPER_KEY = "unicascade_attention_boost"
STATE_KEY = "unicascade_attention_boost_state"        # per model call: the boost in force
CROSS_TAG_KEY = "unicascade_cross_attention_call"      # per Wan cross-attention module call
TRACE_ENV = "UNICASCADE_TRACE_FILE"                    # JSON lines of every model call's boost (debugging, tests)
OURS = "_unicascade_boost_previous"                    # attribute marking our override / forward patches
# An attention function (or override) carrying this attribute multiplies the logits by the keyword LOGIT_SCALE_KW
# itself (the fused kernels of samplers/attention_backends.py, in their group table); others get scaled keys.
LOGIT_SCALE_AWARE = "_unicascade_accepts_logit_scale"
LOGIT_SCALE_KW = "unicascade_logit_scale"

PROGRESS_SOURCES = ("global (from sigma)", "sampler steps")


@dataclass
class Boost:
    """The factors in force for one model call, and how many attention calls they were applied to."""
    text: float
    image: float
    text_tokens: int | None = None   # joint attention only
    applied: int = 0

    @property
    def active(self) -> bool:
        return self.text != 1.0 or self.image != 1.0


@dataclass(frozen=True)
class BoostSchedule:
    """Maps progress to factors: ``factors(u) -> (text, image)``."""
    factors: Callable[[float], tuple[float, float]]
    progress_source: str = PROGRESS_SOURCES[0]
    label: str = "tma"


@dataclass
class _CrossAttentionCall:
    """One Wan cross-attention forward: its image and text key counts, and the calls seen so far."""
    has_image_branch: bool
    image_tokens: int | None
    text_tokens: int | None
    calls: int = field(default=0)

    def is_image_call(self, keys: int) -> bool:
        """By key count when image and text counts differ, else by order (core calls the image branch first)."""
        self.calls += 1
        if not self.has_image_branch:
            return False
        if self.image_tokens is not None and self.image_tokens != self.text_tokens:
            return keys == self.image_tokens
        return self.calls == 1


class _ProgressCache:
    """σ → u by bisection of ``percent_to_sigma``, memoised by what defines the model's σ schedule."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict[tuple, float] = {}

    def __call__(self, model_sampling, sigma: float) -> float:
        key = (type(model_sampling).__name__, getattr(model_sampling, "shift", None),
               getattr(model_sampling, "multiplier", None), float(model_sampling.sigma_max),
               float(model_sampling.sigma_min), sigma)
        with self._lock:
            if key not in self._values:
                if len(self._values) > 4096:
                    self._values.clear()
                self._values[key] = progress_from_sigma(sigma, model_sampling.percent_to_sigma)
            return self._values[key]


def _arg(args, kwargs, index: int, name: str):
    return args[index] if len(args) > index else kwargs.get(name)


def _wan_cross_attention_forward(module, has_image_branch: bool, inner=None):
    """A ``forward`` for one cross-attention module that tags the options it passes down; ``inner`` is a forward
    patch another pack installed before us (called instead of the class's forward)."""
    forward = inner if inner is not None else (lambda *a, **k: type(module).forward(module, *a, **k))

    def tagged_forward(x, context, *args, transformer_options=None, **kwargs):
        tagged = dict(transformer_options or {})
        image_tokens = kwargs.get("context_img_len")
        tagged[CROSS_TAG_KEY] = _CrossAttentionCall(has_image_branch, image_tokens,
                                                    context.shape[1] - (image_tokens or 0))
        return forward(x, context, *args, transformer_options=tagged, **kwargs)

    setattr(tagged_forward, OURS, inner)
    return tagged_forward


def apply_attention_boost(model, family: str, schedule: BoostSchedule):
    """A clone of ``model`` whose visual→text (and Wan I2V visual→image) logits follow ``schedule``."""
    m = model.clone()
    to = m.model_options.setdefault("transformer_options", {})
    current = to.get("optimized_attention_override")
    # Re-applying replaces our earlier boost (its override unwraps to what it chained to).
    previous = getattr(current, OURS) if hasattr(current, OURS) else current
    m.remove_wrappers_with_key("apply_model", WRAPPER_KEY)
    progress_cache = _ProgressCache()
    trace_path = os.environ.get(TRACE_ENV) or None
    trace_lock = threading.Lock()

    def apply_model_wrapper(executor, *args, **kwargs):
        sigma_t = _arg(args, kwargs, 1, "t")
        context = _arg(args, kwargs, 3, "c_crossattn")
        options = _arg(args, kwargs, 5, "transformer_options")
        if options is None or sigma_t is None:
            return executor(*args, **kwargs)
        sigma = float(sigma_t.detach().flatten().max())
        step_sigmas = options.get("sample_sigmas")
        if schedule.progress_source == PROGRESS_SOURCES[1] and step_sigmas is not None:
            u = progress_from_schedule(sigma, step_sigmas.tolist())
        else:
            u = progress_cache(executor.class_obj.model_sampling, sigma)
        text, image = schedule.factors(u)
        text_tokens = int(context.shape[1]) if (family == FLUX and context is not None) else None
        boost = Boost(text=text, image=image, text_tokens=text_tokens)
        options[STATE_KEY] = boost
        if trace_path:
            record = {"schedule": schedule.label, "sigma": sigma, "u": u, "alpha_txt": text, "alpha_img": image,
                      "cond_or_uncond": list(options.get("cond_or_uncond", []))}
            with trace_lock, open(trace_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        try:
            out = executor(*args, **kwargs)
        finally:
            options.pop(STATE_KEY, None)
        if boost.active and boost.applied == 0:
            raise RuntimeError("the attention boost was set for this step but reached no attention call: another "
                               "node replaced the attention override without chaining to it. Apply TMA/TACA after "
                               "other attention patches.")
        return out

    def call_next(func, *args, **kwargs):
        if previous is not None:
            return previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def override(func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        boost = options.get(STATE_KEY)
        if boost is None:
            return call_next(func, *args, **kwargs)
        if family in (WAN, MFM):
            call = options.get(CROSS_TAG_KEY)
            if call is None:  # self-attention
                return call_next(func, *args, **kwargs)
            alpha = boost.image if call.is_image_call(args[1].shape[1]) else boost.text
            boost.applied += 1
            target = previous if previous is not None else func
            if alpha != 1.0 and getattr(target, LOGIT_SCALE_AWARE, False):
                return call_next(func, *args, **{**kwargs, LOGIT_SCALE_KW: alpha})

            def run(q, k, v, *rest, **kw):
                return call_next(func, q, k, v, *rest, **kw)
            return scale_all_logits(run, args[0], args[1], args[2], alpha, *args[3:], **kwargs)
        # FLUX joint attention: text tokens first in double and single blocks
        q, k, v, heads = args[0], args[1], args[2], args[3]
        mask = kwargs.pop("mask", None)
        boost.applied += 1

        def run(q_, k_, v_, mask=None, **kw):
            return call_next(func, q_, k_, v_, heads, *args[4:], mask=mask, **kw)
        return scale_image_to_text_logits(
            run, q, k, v, boost.text, n_text=boost.text_tokens, text_first=True,
            heads_first=bool(kwargs.get("skip_reshape", False)), mask=mask,
            output_heads_first=bool(kwargs.get("skip_output_reshape", False)), **kwargs)

    setattr(override, OURS, previous)
    m.add_wrapper_with_key("apply_model", WRAPPER_KEY, apply_model_wrapper)
    to["optimized_attention_override"] = override

    if family == WAN:
        from comfy.ldm.wan.model import WanI2VCrossAttention, WanT2VCrossAttention
        dm = m.get_model_object("diffusion_model")
        patched = 0
        for name, module in dm.named_modules():
            if isinstance(module, (WanI2VCrossAttention, WanT2VCrossAttention)) and name:
                key = f"diffusion_model.{name}.forward"
                existing = m.object_patches.get(key)
                inner = getattr(existing, OURS) if hasattr(existing, OURS) else existing
                m.add_object_patch(key, _wan_cross_attention_forward(
                    module, isinstance(module, WanI2VCrossAttention), inner))
                patched += 1
        if patched == 0:
            raise ValueError("this Wan model has no text cross-attention modules to boost")
    return m
