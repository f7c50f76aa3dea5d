"""Whether the fused-attention backends can run here: Triton (on CUDA, or under its CPU interpreter with
``TRITON_INTERPRET=1``) and PyTorch FlexAttention. Each check names what is missing instead of raising."""
from __future__ import annotations

import os


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_status() -> str | None:
    """None when Triton imports; else why not."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising something else
        return f"Triton does not import ({type(e).__name__}: {e})"
    return None


def flex_status() -> str | None:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except Exception as e:
        return f"PyTorch FlexAttention does not import ({type(e).__name__}: {e})"
    return None
