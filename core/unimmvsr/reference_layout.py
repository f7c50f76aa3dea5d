"""Separated conditional RoPE for reference tokens (UniMMVSR §3.2 "Separated conditional RoPE", A.5.7).

Target (noisy) latent frames take temporal indices 0 … f−1. The i-th reference takes its own range
n_i … n_i + k_i − 1 (k_i latent frames): ID images one frame each from ``id_start`` (paper: 20), reference
videos one after another from ``video_start`` (paper: 30; 77-frame videos = 20 latent frames → 30 … 49).
Categories never overlap each other or the target, and the harder category (ID images) gets the nearer range.
Spatial (h, w) positions are the normal grid for every token.
"""
from __future__ import annotations

from dataclasses import dataclass

ID_IMAGE = "id_image"
REFERENCE_VIDEO = "reference_video"
PAPER_ID_START = 20
PAPER_VIDEO_START = 30


@dataclass(frozen=True)
class ReferenceSpan:
    category: str
    start: int      # temporal RoPE index of its first latent frame
    frames: int     # latent frames


@dataclass(frozen=True)
class ReferenceLayout:
    target_frames: int
    spans: tuple[ReferenceSpan, ...]

    @property
    def reference_frames(self) -> int:
        return sum(s.frames for s in self.spans)

    def temporal_positions(self) -> list[int]:
        """Temporal RoPE index of every latent frame of the sequence: target first, then references in order."""
        positions = list(range(self.target_frames))
        for span in self.spans:
            positions += list(range(span.start, span.start + span.frames))
        return positions


def layout(target_frames: int, id_image_frames: list[int] | tuple[int, ...] = (),
           reference_video_frames: list[int] | tuple[int, ...] = (), id_start: int = PAPER_ID_START,
           video_start: int = PAPER_VIDEO_START) -> ReferenceLayout:
    """Ranges for the given references (latent frames each; an ID image is 1). Raises if any two overlap."""
    if target_frames < 1:
        raise ValueError(f"the target needs at least one latent frame, got {target_frames}")
    spans: list[ReferenceSpan] = []
    cursor = id_start
    for k in id_image_frames:
        spans.append(ReferenceSpan(ID_IMAGE, cursor, int(k)))
        cursor += int(k)
    id_end = cursor
    cursor = video_start
    for k in reference_video_frames:
        spans.append(ReferenceSpan(REFERENCE_VIDEO, cursor, int(k)))
        cursor += int(k)
    ranges = [("target", 0, target_frames)] + [(s.category, s.start, s.start + s.frames) for s in spans]
    if any(k < 1 for k in list(id_image_frames) + list(reference_video_frames)):
        raise ValueError("every reference needs at least one latent frame")
    for i, (name_a, a0, a1) in enumerate(ranges):
        for name_b, b0, b1 in ranges[i + 1:]:
            if name_a != name_b and a0 < b1 and b0 < a1:
                raise ValueError(
                    f"RoPE ranges overlap: {name_a} {a0}…{a1 - 1} and {name_b} {b0}…{b1 - 1}. The target has "
                    f"{target_frames} latent frames and {len(id_image_frames)} ID image(s) end at {id_end - 1}; "
                    f"move id_start/video_start (paper: 20 and 30 for 20 target latent frames) or shorten the chunk")
    return ReferenceLayout(target_frames, tuple(spans))
