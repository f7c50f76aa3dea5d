"""Runs a Wan model's attention on the pack's fused kernels (core.attention.fused): RoPE applied inside the
kernel from per-token positions, TMA's α applied to the logits by the kernel's group table.

How the kernels are reached, through patch points Wan honours (docs/design.md §12):

1. Self-attention: every ``WanSelfAttention`` module gets an object patch of ``forward`` that computes q, k, v
   (projections and RMSNorm, as Wan does) but does *not* apply ``apply_rope1``: the unrotated q, k go to the kernel
   with the tokens' (t, h, w) positions. The positions are read back from the ``freqs`` tensor the block receives
   (core.attention.rope3d.positions_from_freqs, once per model call, checked against it), so whatever built that
   tensor is served unchanged: Wan's plain grid, UniMMVSR's reference frames at t = 20 and 30 (its
   DIFFUSION_MODEL wrapper concatenates their rope_encode rows), ``rope_options``. The RoPE split and θ are the
   model's own (``rope_embedder.axes_dim``, ``theta``).
2. Cross-attention needs no patch (Wan never rotates its q/k). An ``optimized_attention_override`` swaps the
   host's attention function for the kernel and passes it down the chain of overrides, as the TMA node chains
   (``previous(kernel, …)``): another pack's override that calls the function it is given runs on the kernel; one
   that replaces it wins. TMA's override hands its α to the kernel as a logit scale (a 1×1 group table) instead of
   scaling keys, whichever of the two nodes comes first.
3. Whatever the kernels cannot serve takes ComfyUI's default path, with a log line naming the reason (once per
   reason): gradients on (FlexAttention has no CPU backward; training keeps the default path), a mask, a head dim
   or dtype the kernels lack, a Triton call on a CPU tensor without the interpreter, a self-attention ``forward``
   another pack patched, a kernel that fails to compile or launch for a shape (logged once per shape, never tried
   again for it), another pack's override in the chain (it expects rotated q/k, so self-attention is rotated
   and handed to it), an ``attn1_patch`` (ComfyUI ≥ 0.3x's Wan passes it the rotated q/k), RoPE tables that are
   not a Wan rotation.
4. An APPLY_MODEL wrapper counts the fused and default calls of every model call (written to the trace file when
   UNICASCADE_TRACE_FILE is set).

The backend is read at call time from ``transformer_options``: applying the node again (or with ``default``)
replaces the earlier choice.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field

import torch

from ..core.attention.backend_status import flex_status, interpreter_enabled, triton_status
from ..core.attention.fused import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, GroupTable, rope_attention
from ..core.attention.rope3d import RopeSpec, positions_from_freqs
from .attention_boost import LOGIT_SCALE_AWARE, LOGIT_SCALE_KW, OURS as BOOST_MARK, TRACE_ENV
from .model_families import WAN, attention_family, describe

log = logging.getLogger("UniCascade")

CHOICES = ("auto", "default", "fused (Triton)", "flex")
DEFAULT, TRITON, FLEX = "default", "triton", "flex"
BACKEND_KEY = "unicascade_attention_backend"          # in transformer_options: default | triton | flex
CALLS_KEY = "unicascade_attention_backend_calls"      # per model call: the counts
WRAPPER_KEY = "unicascade_attention_backend"
MARK = "_unicascade_attention_backend_previous"       # marks our override (value: what it chains to) and forwards
KERNEL_MARK = "_unicascade_fused_kernel"              # marks the attention function that runs the kernels


def resolve_backend(requested: str, model) -> tuple[str, str | None]:
    """(backend to run, a message for the user or None)."""
    if requested not in CHOICES:
        raise ValueError(f"backend: {requested!r} is not one of {', '.join(CHOICES)}")
    if requested == "default":
        return DEFAULT, None
    prefix = f"UniCascade Attention ({requested}):"
    if attention_family(model) != WAN:
        return DEFAULT, (f"{prefix} the fused kernels serve Wan 2.1/2.2 models; the MODEL plugged in is "
                         f"{describe(model)}, so it keeps its default attention.")
    dm = model.get_model_object("diffusion_model")
    head_dim = dm.dim // dm.num_heads
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return DEFAULT, (f"{prefix} this model's head dim is {head_dim}; the fused kernels support "
                         f"{' and '.join(map(str, SUPPORTED_HEAD_DIMS))}, so it keeps its default attention.")
    device = torch.device(model.load_device)
    if requested == "auto":
        if device.type != "cuda":
            return DEFAULT, f"{prefix} the model runs on {device.type}, not CUDA: default attention."
        why = triton_status()
        return (DEFAULT, f"{prefix} {why}: default attention.") if why else (TRITON, None)
    if requested == "fused (Triton)":
        why = triton_status()
        if why:
            return DEFAULT, (f"{prefix} {why}, so the model keeps its default attention. Install Triton (Linux "
                             f"with a CUDA GPU) or choose flex.")
        if device.type != "cuda":
            if interpreter_enabled():
                return TRITON, (f"{prefix} the model runs on {device.type}; TRITON_INTERPRET=1 is set, so Triton's "
                                f"CPU interpreter runs the kernel (very slow: for tests).")
            return DEFAULT, (f"{prefix} the Triton kernel needs a CUDA device and this model runs on "
                             f"{device.type}, so it keeps its default attention; flex serves CPUs.")
        return TRITON, None
    why = flex_status()
    if why:
        return DEFAULT, f"{prefix} {why}, so the model keeps its default attention."
    return FLEX, None


def foreign_override(fn):
    """The first override in a chain that is not the pack's own (TMA/TACA or ours), or None."""
    while fn is not None:
        if hasattr(fn, MARK):
            fn = getattr(fn, MARK)
        elif hasattr(fn, BOOST_MARK):
            fn = getattr(fn, BOOST_MARK)
        else:
            return fn
    return None


@dataclass
class Calls:
    """Per model call. fused_self: self-attention with RoPE in the kernel; default_self: self-attention that
    took Wan's own forward (separate RoPE pass). fused_cross / default_cross: attention calls that reached our
    override (cross-attention, and self-attention arriving rotated) run on the kernel / on the host's function."""
    fused_self: int = 0
    fused_cross: int = 0
    default_self: int = 0
    default_cross: int = 0
    reasons: set = field(default_factory=set)


class _State:
    """What one application of the node shares between its patches: the RoPE spec, positions cached per freqs
    tensor (one model call), small logit tables per device, and which fallback reasons were already logged."""

    def __init__(self, spec: RopeSpec):
        self.spec = spec
        self._lock = threading.Lock()
        self._freqs = None
        self._positions = None
        self._tables: dict[tuple, GroupTable] = {}
        self._logged: set[str] = set()
        self._failed: dict[tuple, str] = {}     # kernel calls that failed to compile or launch → the error

    def positions(self, freqs: torch.Tensor):
        with self._lock:
            if self._freqs is not None and self._freqs() is freqs:
                return self._positions
        positions = positions_from_freqs(freqs, self.spec)
        with self._lock:
            self._freqs, self._positions = weakref.ref(freqs), positions
        return positions

    def table(self, scale: float, device) -> GroupTable:
        key = (float(scale), str(device))
        with self._lock:
            if key not in self._tables:
                if len(self._tables) > 256:
                    self._tables.clear()
                self._tables[key] = GroupTable(torch.tensor([[float(scale)]], device=device))
            return self._tables[key]

    def fallback(self, reason: str, options: dict, kind: str) -> None:
        calls = options.get(CALLS_KEY)
        if calls is not None:
            setattr(calls, f"default_{kind}", getattr(calls, f"default_{kind}") + 1)
            calls.reasons.add(reason)
        with self._lock:
            first = reason not in self._logged
            self._logged.add(reason)
        if first:
            log.warning("UniCascade Attention: %s attention takes the default path: %s", kind, reason)

    def run_kernel(self, backend: str, kind: str, options: dict, key: tuple, call):
        """``call()``'s result, or None when the kernel failed to compile or launch for this shape — now or on an
        earlier call (then it is not tried again): logged once per shape, and the caller takes the default path.
        Out-of-memory errors go up to ComfyUI, which has its own ways to retry."""
        with self._lock:
            failed = key in self._failed
        if not failed:
            try:
                return call()
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:   # Triton compile/launch errors, inductor build failures, driver errors …
                with self._lock:
                    self._failed[key] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        self.fallback(f"the {backend} kernel failed for {kind}-attention shape {key[2:]} ({self._failed[key]}); "
                      f"that shape takes the default path", options, kind)
        return None

    @staticmethod
    def fused(options: dict, kind: str) -> None:
        calls = options.get(CALLS_KEY)
        if calls is not None:
            setattr(calls, f"fused_{kind}", getattr(calls, f"fused_{kind}") + 1)


def _unsupported(backend: str, dtype, head_dim: int, device) -> str | None:
    if torch.is_grad_enabled():
        return "gradients are enabled (training): the fused kernels are inference only"
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return f"head dim {head_dim} (the kernels support {', '.join(map(str, SUPPORTED_HEAD_DIMS))})"
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} (the kernels support float32, float16, bfloat16)"
    if backend == TRITON and torch.device(device).type != "cuda" and not interpreter_enabled():
        return f"the Triton kernel needs CUDA tensors, these are on {device}"
    return None


def _kernel_function(func, backend: str, state: _State):
    """An attention function with ComfyUI's signature that runs the kernel (no RoPE: cross-attention, or calls
    that arrive rotated), multiplying the logits by the logit scale it is handed; ``func`` serves the rest."""
    def attention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                  **kwargs):
        scale = kwargs.pop(LOGIT_SCALE_KW, None)
        scale = 1.0 if scale is None else float(scale)
        options = kwargs.get("transformer_options") or {}
        head_dim = q.shape[-1] if skip_reshape else q.shape[-1] // heads

        def default_path():   # the host's function, the logit scale as scaled keys (exact)
            return func(q, k * scale if scale != 1.0 else k, v, heads, mask=mask, attn_precision=attn_precision,
                        skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape, **kwargs)

        reason = "an attention mask" if mask is not None else _unsupported(backend, q.dtype, head_dim, q.device)
        if reason is not None:
            state.fallback(reason, options, "cross")
            return default_path()
        if skip_reshape:   # [B, H, L, d]
            qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
        else:              # [B, L, H·d]
            qh, kh, vh = (t.view(t.shape[0], t.shape[1], heads, head_dim) for t in (q, k, v))
        key = (backend, "cross", tuple(qh.shape), tuple(kh.shape), str(q.dtype), str(q.device))
        result = state.run_kernel(backend, "cross", options, key,
                                  lambda: rope_attention(backend, qh, kh, vh, groups=state.table(scale, q.device)))
        if result is None:
            return default_path()
        out = result[0]
        state.fused(options, "cross")
        if skip_output_reshape:
            return out.transpose(1, 2)
        return out.reshape(out.shape[0], out.shape[1], heads * head_dim)

    setattr(attention, KERNEL_MARK, True)
    setattr(attention, LOGIT_SCALE_AWARE, True)
    return attention


def _pass_scale(target, args: tuple, kwargs: dict, scale) -> tuple[tuple, dict]:
    """Hand a logit scale on: as the keyword to a function that takes it, else as scaled keys (exact)."""
    if scale is None or float(scale) == 1.0:
        return args, kwargs
    if getattr(target, LOGIT_SCALE_AWARE, False):
        return args, {**kwargs, LOGIT_SCALE_KW: scale}
    return (args[0], args[1] * float(scale), *args[2:]), kwargs


def _make_override(previous, state: _State):
    def override(func, *args, **kwargs):
        options = kwargs.get("transformer_options") or {}
        backend = options.get(BACKEND_KEY, DEFAULT)
        scale = kwargs.pop(LOGIT_SCALE_KW, None)
        if backend != DEFAULT and not getattr(func, KERNEL_MARK, False):
            func = _kernel_function(func, backend, state)
        target = previous if previous is not None else func
        args, kwargs = _pass_scale(target, args, kwargs, scale)
        if previous is not None:
            return previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    setattr(override, MARK, previous)
    setattr(override, LOGIT_SCALE_AWARE, True)
    return override


def _self_attention_forward(module, inner, state: _State):
    """``forward(x, freqs, transformer_options)`` of one WanSelfAttention with RoPE inside the kernel."""
    default = inner if inner is not None else (lambda *a, **k: type(module).forward(module, *a, **k))

    def forward(x, freqs, transformer_options={}):
        options = transformer_options or {}
        backend = options.get(BACKEND_KEY, DEFAULT)
        if backend == DEFAULT:
            return default(x, freqs, transformer_options=transformer_options)
        b, s, n, d = x.shape[0], x.shape[1], module.num_heads, module.head_dim
        reason = _unsupported(backend, x.dtype, d, x.device)
        positions = None
        if reason is None and inner is not None:
            reason = "another node patched this self-attention's forward (its own RoPE pass is kept)"
        if reason is None and (options.get("patches") or {}).get("attn1_patch"):
            reason = ("an attn1_patch is set (newer ComfyUI's Wan hands it the rotated q/k, which the kernel "
                      "never forms)")
        if reason is None:
            other = foreign_override(options.get("optimized_attention_override"))
            if other is not None:
                reason = (f"another attention override ({getattr(other, '__qualname__', type(other).__name__)}) "
                          f"is installed and expects rotated q/k")
        if reason is None:
            positions = state.positions(freqs) if freqs.shape[1] == s else None
            if positions is None:
                reason = "the RoPE table it was given is not a Wan (t, h, w) rotation of its tokens"
        if reason is not None:
            state.fallback(reason, options, "self")
            return default(x, freqs, transformer_options=transformer_options)

        def fused_attention():   # projections inside: a shape known to fail costs nothing before the default path
            q = module.norm_q(module.q(x)).view(b, s, n, d)
            k = module.norm_k(module.k(x)).view(b, s, n, d)
            v = module.v(x).view(b, s, n, d)
            at = positions.to(x.device)
            return rope_attention(backend, q, k, v, q_positions=at, k_positions=at, rope=state.spec)

        key = (backend, "self", (b, s, n, d), (b, s, n, d), str(x.dtype), str(x.device))
        result = state.run_kernel(backend, "self", options, key, fused_attention)
        if result is None:
            return default(x, freqs, transformer_options=transformer_options)
        out = result[0]
        state.fused(options, "self")
        return module.o(out.reshape(b, s, n * d))

    setattr(forward, MARK, inner)
    return forward


def _trace(record: dict) -> None:
    path = os.environ.get(TRACE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def apply_attention_backend(model, requested: str):
    """(a clone of ``model`` running ``requested``'s backend, the backend that runs, a message or None)."""
    backend, message = resolve_backend(requested, model)
    if message:  # auto on a machine without CUDA/Triton is a normal outcome, not a warning
        (log.info if requested == "auto" else log.warning)("%s", message)
    _trace({"event": "attention_backend_choice", "requested": requested, "backend": backend, "message": message})
    m = model.clone()
    to = m.model_options.setdefault("transformer_options", {})
    to[BACKEND_KEY] = backend
    if backend == DEFAULT:
        return m, backend, message

    from comfy.ldm.wan.model import WanSelfAttention

    dm = m.get_model_object("diffusion_model")
    embedder = dm.rope_embedder
    state = _State(RopeSpec(tuple(int(a) for a in embedder.axes_dim), float(embedder.theta), "adjacent"))
    current = to.get("optimized_attention_override")
    previous = getattr(current, MARK) if hasattr(current, MARK) else current
    to["optimized_attention_override"] = _make_override(previous, state)

    def apply_model_wrapper(executor, *args, **kwargs):
        options = args[5] if len(args) > 5 else kwargs.get("transformer_options")
        if options is None:
            return executor(*args, **kwargs)
        calls = Calls()
        options[CALLS_KEY] = calls
        try:
            out = executor(*args, **kwargs)
        finally:
            options.pop(CALLS_KEY, None)
        _trace({"event": "attention_backend", "backend": options.get(BACKEND_KEY), "fused_self": calls.fused_self,
                "fused_cross": calls.fused_cross, "default_self": calls.default_self,
                "default_cross": calls.default_cross, "reasons": sorted(calls.reasons)})
        return out

    m.remove_wrappers_with_key("apply_model", WRAPPER_KEY)
    m.add_wrapper_with_key("apply_model", WRAPPER_KEY, apply_model_wrapper)
    for name, module in dm.named_modules():
        if type(module) is WanSelfAttention and name:
            key = f"diffusion_model.{name}.forward"
            existing = m.object_patches.get(key)
            inner = getattr(existing, MARK) if hasattr(existing, MARK) else existing
            m.add_object_patch(key, _self_attention_forward(module, inner, state))
    return m, backend, message
