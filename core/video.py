"""Decoding the video stream of a file alone, with PyAV (which ComfyUI ships).

Why: ComfyUI 0.3.75's ``VideoFromFile.get_components()`` decodes every audio stream too and stops at the first
packet its decoder refuses, so a valid file whose audio starts mid-frame (Debian opencv-doc's ``Megamind.avi``:
MPEG-4 video + AC3 audio; the AVI's first AC3 chunk is 729 bytes of a 768-byte frame) fails as a whole although
every video frame decodes. Frames come out as ComfyUI holds them: float32 [T, H, W, 3] in [0, 1] (rgb24 / 255).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch


@dataclass
class DecodedVideo:
    frames: torch.Tensor        # [T, H, W, 3] float32 in [0, 1]
    frame_rate: Fraction
    skipped_packets: int        # damaged video packets that did not decode (their frames are missing)


def decode_video_stream(source: str | io.BytesIO, start_time: float = 0.0, duration: float = 0.0) -> DecodedVideo:
    """The first video stream of ``source``, every other stream left alone. Frames before ``start_time`` and,
    when ``duration`` > 0, from ``start_time + duration`` on (seconds) are left out. Packets the decoder refuses
    are skipped and counted; raises ValueError when the file cannot be opened, has no video stream, or none of
    its packets decodes."""
    import av

    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        container = av.open(source, mode="r")
    except av.FFmpegError as e:
        raise ValueError(f"PyAV cannot open it ({e})") from e
    with container:
        if not container.streams.video:
            raise ValueError("it has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        frame_rate = Fraction(rate) if rate else Fraction(1)
        end = start_time + duration if duration > 0 else None
        frames, skipped, error = [], 0, None

        def keep(frame) -> None:
            t = frame.time
            if t is not None and (t < start_time - 1e-6 or (end is not None and t >= end - 1e-6)):
                return
            frames.append(frame.to_ndarray(format="rgb24"))

        for packet in container.demux(stream):
            try:
                for frame in packet.decode():  # the last (empty) packet flushes the decoder
                    keep(frame)
            except av.FFmpegError as e:
                skipped, error = skipped + 1, e
        if not frames and skipped:
            raise ValueError(f"none of its video packets decodes ({skipped} refused: {error})")
        if frames:
            pixels = torch.from_numpy(np.stack(frames)).float().div_(255.0)
        else:
            pixels = torch.zeros(0, stream.height or 0, stream.width or 0, 3)
        return DecodedVideo(pixels, frame_rate, skipped)
