"""Frames of a core VIDEO input (e.g. from Load Video): ComfyUI's own reader, else the file's video stream alone."""
from __future__ import annotations

import logging
import os

import torch

from ..core.video import decode_video_stream


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


def video_frames(video, name: str, node: str) -> tuple[torch.Tensor, float]:
    """IMAGE frames [T, H, W, C] and the frame rate of a VIDEO.

    ``get_components()`` first (what core's Get Video Components reads). When it fails — ComfyUI 0.3.75 also
    decodes the audio and gives up at the first audio packet its decoder refuses (a valid AVI with AC3 audio) —
    the file's first video stream is decoded alone with PyAV (core/video.py), the audio left out, with a log
    line naming ``node`` and the input ``name``. ValueError '<name>: could not decode …' when that fails too (or
    the VIDEO is not a file)."""
    try:
        components = video.get_components()
        return components.images, float(components.frame_rate)
    except Exception as e:  # PyAV and core raise assorted errors for files they cannot read
        core_error = e
    source = video.get_stream_source() if hasattr(video, "get_stream_source") else None
    if source is None:
        raise ValueError(f"{name}: could not decode it ({_describe(core_error)})") from core_error
    start, duration = video.get_active_trim_window() if hasattr(video, "get_active_trim_window") else (0.0, 0.0)
    label = os.path.basename(source) if isinstance(source, str) else "the video"
    try:
        decoded = decode_video_stream(source, start, duration)
    except Exception as e:
        raise ValueError(f"{name}: could not decode {label}: ComfyUI's reader failed ({_describe(core_error)}) and "
                         f"so did decoding its video stream alone ({e}); is the file damaged, or not a video?") from e
    logging.warning("UniCascade: %s: %s: ComfyUI could not read %s (%s); decoded its video stream alone instead: "
                    "%d frames at %.3g fps, audio left out", node, name, label, _describe(core_error),
                    decoded.frames.shape[0], float(decoded.frame_rate))
    if decoded.skipped_packets:
        logging.warning("UniCascade: %s: %s: %d damaged video packets of %s did not decode; their frames are "
                        "missing", node, name, decoded.skipped_packets, label)
    return decoded.frames, float(decoded.frame_rate)
