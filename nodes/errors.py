"""Errors leave UniCascade nodes as builtin exception types with their message unchanged. ComfyUI reports an
execution error's type as its class's module path (execution.full_type_name), and it names a custom node pack's
modules after the pack's install path, so the pack's own exceptions (BackendError, ConfigError,
UnsupportedModelError) would read '/…/custom_nodes/ComfyUI-UniCascade.core.reflection.backend.BackendError'.
"""
from __future__ import annotations

import functools

PACK = __name__.rsplit(".", 2)[0]   # the pack's package, as ComfyUI (or a test) named it


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
