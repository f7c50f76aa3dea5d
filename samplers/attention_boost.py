"""Installs a timestep-scheduled attention-logit boost on a cloned ComfyUI model (UniVid §2.3 TMA, TACA).

How it reaches the logits, through patch points Wan and Flux honour (SPEC §5), on every attention backend:

1. An APPLY_MODEL wrapper computes the boost once per model call from the call's own σ, so the conditional
   and unconditional batches of a step always share it, and stores it in ``transformer_options``.
2. Wan: every text cross-attention module gets an object patch of ``forward`` that tags the options it passes
   down as "cross-attention" (an I2V/FLF2V module makes two attention calls: CLIP-image keys first, then text
   keys). Self-attention is never tagged, so it is never touched.
3. ``optimized_attention_override`` scales the logits of tagged calls (core.attention.logit_scaling) and then
   calls the previous override, if the user had one (e.g. a sage/flash attention patch), or the host's
   attention function.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from typing import Callable

from ..core.attention.logit_scaling import scale_all_logits, scale_image_to_text_logits
from ..core.attention.progress import progress_from_schedule, progress_from_sigma, step_index_from_schedule
from .model_families import FLUX, WAN

WRAPPER_KEY = "unicascade_attention_boost"
STATE_KEY = "unicascade_attention_boost_state"        # per model call: the boost in force
CROSS_TAG_KEY = "unicascade_cross_attention_call"      # per Wan cross-attention module call
PREVIOUS_OVERRIDE_KEY = "unicascade_attention_boost_previous_override"
TRACE_ENV = "UNICASCADE_TRACE_FILE"                    # JSON lines of every model call's boost (debugging, tests)

PROGRESS_SOURCES = ("global (from sigma)", "sampler steps")


@dataclass(frozen=True)
class Boost:
    """The factors in force for one model call."""
    text: float
    image: float
    text_tokens: int | None = None   # joint attention only


@dataclass(frozen=True)
class BoostSchedule:
    """Maps progress to factors: ``factors(u, step_index) -> (text, image)``."""
    factors: Callable[[float, int], tuple[float, float]]
    progress_source: str = PROGRESS_SOURCES[0]
    label: str = "tma"


class _CrossAttentionCall:
    """Counts the attention calls of one Wan cross-attention forward (I2V: image branch first, then text)."""
    __slots__ = ("has_image_branch", "calls")

    def __init__(self, has_image_branch: bool):
        self.has_image_branch = has_image_branch
        self.calls = 0

    def next_is_image(self) -> bool:
        is_image = self.has_image_branch and self.calls == 0
        self.calls += 1
        return is_image


class _ProgressCache:
    """σ → u by bisection of ``percent_to_sigma``, memoised per model_sampling object."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict[tuple[int, float], float] = {}

    def __call__(self, model_sampling, sigma: float) -> float:
        key = (id(model_sampling), sigma)
        with self._lock:
            if key not in self._values:
                if len(self._values) > 4096:
                    self._values.clear()
                self._values[key] = progress_from_sigma(sigma, model_sampling.percent_to_sigma)
            return self._values[key]


def _arg(args, kwargs, index: int, name: str):
    return args[index] if len(args) > index else kwargs.get(name)


def _wan_cross_attention_forward(module, has_image_branch: bool):
    forward = type(module).forward

    def tagged_forward(x, context, *args, transformer_options=None, **kwargs):
        tagged = dict(transformer_options or {})
        tagged[CROSS_TAG_KEY] = _CrossAttentionCall(has_image_branch)
        return forward(module, x, context, *args, transformer_options=tagged, **kwargs)

    return tagged_forward


def apply_attention_boost(model, family: str, schedule: BoostSchedule):
    """A clone of ``model`` whose visual→text (and Wan I2V visual→image) logits follow ``schedule``."""
    m = model.clone()
    to = m.model_options.setdefault("transformer_options", {})
    # Re-applying replaces an earlier boost instead of stacking on it.
    previous = to.get(PREVIOUS_OVERRIDE_KEY, to.get("optimized_attention_override"))
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
        step_index = step_index_from_schedule(sigma, step_sigmas.tolist()) if step_sigmas is not None else 0
        text, image = schedule.factors(u, step_index)
        text_tokens = int(context.shape[1]) if (family == FLUX and context is not None) else None
        options[STATE_KEY] = Boost(text=text, image=image, text_tokens=text_tokens)
        if trace_path:
            record = {"schedule": schedule.label, "sigma": sigma, "u": u, "step_index": step_index,
                      "alpha_txt": text, "alpha_img": image,
                      "cond_or_uncond": list(options.get("cond_or_uncond", []))}
            with trace_lock, open(trace_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        try:
            return executor(*args, **kwargs)
        finally:
            options.pop(STATE_KEY, None)

    def call_next(func, *args, **kwargs):
        if previous is not None:
            return previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def override(func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        boost = options.get(STATE_KEY)
        if boost is None:
            return call_next(func, *args, **kwargs)
        if family == WAN:
            call = options.get(CROSS_TAG_KEY)
            if call is None:  # self-attention
                return call_next(func, *args, **kwargs)
            alpha = boost.image if call.next_is_image() else boost.text

            def run(q, k, v, *rest, **kw):
                return call_next(func, q, k, v, *rest, **kw)
            return scale_all_logits(run, args[0], args[1], args[2], alpha, *args[3:], **kwargs)
        # FLUX joint attention: text tokens first in double and single blocks
        q, k, v, heads = args[0], args[1], args[2], args[3]
        mask = kwargs.pop("mask", None)

        def run(q_, k_, v_, mask=None, **kw):
            return call_next(func, q_, k_, v_, heads, *args[4:], mask=mask, **kw)
        return scale_image_to_text_logits(
            run, q, k, v, boost.text, n_text=boost.text_tokens, text_first=True,
            heads_first=bool(kwargs.get("skip_reshape", False)), mask=mask,
            output_heads_first=bool(kwargs.get("skip_output_reshape", False)), **kwargs)

    m.add_wrapper_with_key("apply_model", WRAPPER_KEY, apply_model_wrapper)
    to["optimized_attention_override"] = override
    to[PREVIOUS_OVERRIDE_KEY] = previous

    if family == WAN:
        from comfy.ldm.wan.model import WanI2VCrossAttention, WanT2VCrossAttention
        dm = m.get_model_object("diffusion_model")
        patched = 0
        for name, module in dm.named_modules():
            if isinstance(module, (WanI2VCrossAttention, WanT2VCrossAttention)) and name:
                has_image = isinstance(module, WanI2VCrossAttention)
                m.add_object_patch(f"diffusion_model.{name}.forward",
                                   _wan_cross_attention_forward(module, has_image))
                patched += 1
        if patched == 0:
            raise ValueError("this Wan model has no text cross-attention modules to boost")
    return m
