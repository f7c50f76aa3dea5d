"""The node kit: what every part of the pack that talks to users shares — node identity, how errors leave a node,
input rules for ``validate_inputs`` and the IMAGE channel rule. It sits below the nodes and the loaders
(docs/architecture.md) and imports nothing else of the pack.

- Node identity: ids are workflow identity (never rename once published); categories sit under one root.
- Errors leave UniCascade nodes as builtin exception types with their message unchanged. ComfyUI reports an
  execution error's type as its class's module path (execution.full_type_name), and it names a custom node pack's
  modules after the pack's install path, so the pack's own exceptions (BackendError, ConfigError,
  UnsupportedModelError) would read '/…/custom_nodes/ComfyUI-UniCascade.core.reflection.backend.BackendError'.
- Input checks: ComfyUI attributes a ``validate_inputs`` failure to every input that function takes
  (execution.validate_inputs adds one 'custom_validation_failed' error per argument, and the frontend marks each of
  those inputs). So a node's ``validate_inputs`` takes ONE input, the one worth refusing before anything runs, and
  the node's other values are checked when it runs (``require_choice`` and the like: a ValueError naming the input).
  ComfyUI 0.3.75 does not check V3 combo values itself.
- IMAGE inputs, one rule for every node: RGBA frames (e.g. from Join Image with Alpha) lose their alpha channel,
  with a log line; other channel counts are refused.
"""
from __future__ import annotations

import functools
import logging

import torch

PACK = __name__.rsplit(".", 1)[0]   # the pack's package, as ComfyUI (or a test) named it

# -- node identity ----------------------------------------------------------------------------------------------
ID_PREFIX = "UniCascade"
CATEGORY_ROOT = "UniCascade"


def node_id(name: str) -> str:
    return f"{ID_PREFIX}{name}"


def category(sub: str) -> str:
    return f"{CATEGORY_ROOT}/{sub}"


# -- errors ------------------------------------------------------------------------------------------------------
def builtin_type(exc_type: type) -> type:
    """The first builtin class among an exception class's bases (RuntimeError for BackendError …)."""
    return next(c for c in exc_type.__mro__ if c.__module__ == "builtins")


def plain_errors(execute):
    """Wraps a node's ``execute`` (below its @classmethod): an exception of the pack is raised again as its builtin
    base with the same message, chained to the original (whose traceback the server log keeps). Exceptions of
    ComfyUI, torch and the rest pass unchanged (ComfyUI tells interruptions and out-of-memory by their type)."""
    @functools.wraps(execute)
    def wrapper(cls, *args, **kwargs):
        try:
            return execute(cls, *args, **kwargs)
        except Exception as e:
            module = type(e).__module__
            if module != PACK and not module.startswith(PACK + "."):
                raise
            raise builtin_type(type(e))(str(e)) from e
    wrapper.plain_errors = True
    return wrapper


# -- input rules -------------------------------------------------------------------------------------------------
def choice_error(name: str, value, options) -> str | None:
    """An error message if a combo value is not one of its options (None = linked, checked at run time)."""
    if value is None or value in options:
        return None
    return f"{name}: {value!r} is not one of {', '.join(map(str, options))}"


def first_error(*errors: str | None) -> bool | str:
    for error in errors:
        if error:
            return error
    return True


def with_rule(inp, name: str):
    """Marks a widget with a validation rule (js/ shows it as a hint before queueing): ``name`` is a rule the
    frontend knows, e.g. "multiple_of_16"."""
    inp.extra_dict = {**(inp.extra_dict or {}), "unicascade_rule": name}
    return inp


def require_choice(name: str, value, options) -> None:
    """At run time: a ValueError naming the input if a combo value is not one of its options."""
    error = choice_error(name, value, options)
    if error:
        raise ValueError(error)


# -- IMAGE inputs ------------------------------------------------------------------------------------------------
def rgb_frames(images: torch.Tensor | None, name: str, node: str) -> torch.Tensor | None:
    """IMAGE [..., C] → [..., 3]: RGB passes unchanged, RGBA's alpha is dropped (logged once per call, naming
    ``node`` and the input ``name``), any other channel count raises ValueError naming the input. None (an
    unconnected optional input), what is not a [B, H, W, C] tensor and empty batches (core makes [0, 3, 0, 0] of
    a video without frames) pass unchanged: the node's own checks name those."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.numel() == 0:
        return images
    channels = images.shape[-1]
    if channels == 3:
        return images
    if channels == 4:
        logging.warning("UniCascade: %s: %s is RGBA; its alpha channel is dropped (only RGB is used)", node, name)
        return images[..., :3]
    raise ValueError(f"{name}: frames have {channels} channels; RGB (3) or RGBA (4) images are needed")
