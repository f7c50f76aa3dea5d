"""Reading the frames a training sample needs from a clip (UniMMVSR §3.3: samples are windows of long videos).

A clip small enough (``whole_clip_mb``) is decoded once and kept (least recently used dropped first), so a short
clip drawn at every step costs one decode. A longer one is never decoded whole: ``read`` seeks to the keyframe
before the window's first frame (by timestamp) and decodes forward to its last, so a 10-minute clip costs what a
5-second one does. Frames come out as uint8 [T, H, W, 3], equal to the same slice of a full decode.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch


class ClipError(ValueError):
    pass


@dataclass(frozen=True)
class ClipInfo:
    frames: int
    height: int
    width: int
    rate: Fraction          # frames per second
    start: float            # the stream's first timestamp (s)

    @property
    def bytes(self) -> int:
        return self.frames * self.height * self.width * 3


def _open(path: str):
    import av

    if not os.path.isfile(path):
        raise ClipError(f"{path}: no such file")
    try:
        container = av.open(path, mode="r")
    except av.FFmpegError as e:
        raise ClipError(f"{path}: could not decode ({e})") from None
    if not container.streams.video:
        container.close()
        raise ClipError(f"{path}: could not decode (no video stream)")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def probe(path: str) -> ClipInfo:
    """Frame count, size and rate from the container's header (no frame is decoded when the stream states its
    length; else its duration × rate)."""
    container, stream = _open(path)
    with container:
        rate = Fraction(stream.average_rate or stream.guessed_rate or 1)
        tb = stream.time_base or Fraction(1, 1_000_000)
        start = float((stream.start_time or 0) * tb)
        frames = stream.frames
        if not frames and stream.duration:
            frames = round(float(stream.duration * tb) * rate)
        if not frames and container.duration:
            frames = round(container.duration / 1_000_000 * rate)
        if not frames or not stream.height or not stream.width:
            raise ClipError(f"{path}: could not decode (no frame count or size in its header)")
        return ClipInfo(int(frames), stream.height, stream.width, rate, start)


def decode_range(path: str, first: int, count: int, info: ClipInfo | None = None) -> tuple[torch.Tensor, int]:
    """Frames [first, first + count) as uint8 [count, H, W, 3], and how many frames were decoded to get them."""
    import av

    info = info or probe(path)
    if first < 0 or count < 1 or first + count > info.frames:
        raise ClipError(f"{path}: frames {first}…{first + count - 1} are outside its {info.frames}")
    container, stream = _open(path)
    out: list[np.ndarray] = []
    decoded = 0
    with container:
        tb = stream.time_base
        if first > 0:   # to the keyframe at or before the first frame's timestamp
            target = info.start + first / info.rate
            container.seek(int(target / tb), stream=stream, backward=True, any_frame=False)
        try:
            for frame in container.decode(stream):
                decoded += 1
                if frame.pts is None:
                    continue
                index = round((float(frame.pts * tb) - info.start) * info.rate)
                if index < first:
                    continue
                if index >= first + count:
                    break
                out.append(frame.to_ndarray(format="rgb24"))
        except av.FFmpegError as e:
            raise ClipError(f"{path}: could not decode frames {first}…{first + count - 1} ({e})") from None
    if len(out) != count:
        raise ClipError(f"{path}: got {len(out)} of frames {first}…{first + count - 1} (the header says "
                        f"{info.frames} frames)")
    return torch.from_numpy(np.stack(out)), decoded


class ClipReader:
    """``reader(path)`` → a Clip; keeps whole decodes of clips up to ``whole_clip_mb`` (at most ``memory_mb``)."""

    def __init__(self, whole_clip_mb: float = 256.0, memory_mb: float = 2048.0):
        self.whole_limit = int(whole_clip_mb * 2**20)
        self.budget = int(memory_mb * 2**20)
        self.whole: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.held = 0
        self.infos: OrderedDict[str, ClipInfo] = OrderedDict()

    def __call__(self, path: str) -> "Clip":
        return Clip(self, path, self.info(path))

    def info(self, path: str) -> ClipInfo:
        if path not in self.infos:
            self.infos[path] = probe(path)
            if len(self.infos) > 100_000:
                self.infos.popitem(last=False)
        return self.infos[path]

    def read(self, path: str, first: int, count: int) -> torch.Tensor:
        info = self.info(path)
        if info.bytes > self.whole_limit:
            return decode_range(path, first, count, info)[0]
        if path not in self.whole:
            frames, _ = decode_range(path, 0, info.frames, info)
            self.whole[path] = frames
            self.held += frames.numel()
            while self.held > self.budget and len(self.whole) > 1:
                _, old = self.whole.popitem(last=False)
                self.held -= old.numel()
        self.whole.move_to_end(path)
        if first + count > info.frames:
            raise ClipError(f"{path}: frames {first}…{first + count - 1} are outside its {info.frames}")
        return self.whole[path][first:first + count]


@dataclass
class Clip:
    reader: ClipReader
    path: str
    info: ClipInfo

    @property
    def frames(self) -> int:
        return self.info.frames

    @property
    def size(self) -> tuple[int, int]:
        return self.info.height, self.info.width

    def read(self, first: int, count: int) -> torch.Tensor:
        return self.reader.read(self.path, first, count)
