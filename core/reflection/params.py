"""Parameters of Pyramid Reflection with the paper's defaults (UniVid §3.1 implementation details,
docs/design.md §11)."""
from __future__ import annotations

from dataclasses import dataclass

POOL_SIZE = 64                 # N frames sampled uniformly, embedded once
CAPTION_FRAMES = 16            # uniformly spaced pool frames summarised into the global caption
STATIC_SIZES = (4, 8, 16)      # expand schedule (static questions)
DYNAMIC_SIZES = (64, 32, 16)   # shrink schedule (dynamic questions, MMR)
MMR_LAMBDA = 0.5
ACCEPT_THRESHOLD = 0.7         # τ
MAX_ROUNDS = 3                 # R
MAX_NEW_TOKENS = 256
IMAGE_MAX_SIDE = 448           # longest side of images sent to the vision-language model
EMBED_BATCH = 64               # SigLIP2 batch size (paper: 64)

QUESTION_TYPES = ("auto (LLM router)", "static (expand)", "dynamic (shrink)")


@dataclass(frozen=True)
class ReflectionParams:
    pool_size: int = POOL_SIZE
    caption_frames: int = CAPTION_FRAMES
    static_sizes: tuple[int, ...] = STATIC_SIZES
    dynamic_sizes: tuple[int, ...] = DYNAMIC_SIZES
    mmr_lambda: float = MMR_LAMBDA
    accept_threshold: float = ACCEPT_THRESHOLD
    max_rounds: int = MAX_ROUNDS
    question_type: str = QUESTION_TYPES[0]
    max_new_tokens: int = MAX_NEW_TOKENS
    image_max_side: int = IMAGE_MAX_SIDE

    def __post_init__(self):
        check_sizes("static_sizes", self.static_sizes, increasing=True)
        check_sizes("dynamic_sizes", self.dynamic_sizes, increasing=False)
        for name, lo in (("pool_size", 1), ("caption_frames", 1), ("max_rounds", 1), ("max_new_tokens", 1),
                         ("image_max_side", 16)):
            if int(getattr(self, name)) < lo:
                raise ValueError(f"{name} must be at least {lo}, got {getattr(self, name)}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in 0–1, got {self.mmr_lambda}")
        if not 0.0 <= self.accept_threshold <= 1.0:
            raise ValueError(f"accept_threshold must be in 0–1, got {self.accept_threshold}")
        if self.question_type not in QUESTION_TYPES:
            raise ValueError(f"question_type {self.question_type!r} is not one of {', '.join(QUESTION_TYPES)}")

    def forced_mode(self) -> str | None:
        """'static' or 'dynamic' when the user fixed the route, None for the LLM router."""
        return None if self.question_type == QUESTION_TYPES[0] else self.question_type.split()[0]

    def sizes(self, mode: str) -> tuple[int, ...]:
        return self.static_sizes if mode == "static" else self.dynamic_sizes

    def round_size(self, mode: str, round_index: int, pool: int) -> int:
        """Working-set size of round ``round_index`` (0-based); rounds past the schedule keep its last size; never
        more than the pool."""
        sizes = self.sizes(mode)
        return min(sizes[min(round_index, len(sizes) - 1)], pool)


def parse_sizes(name: str, text: str, increasing: bool) -> tuple[int, ...]:
    """'4, 8, 16' → (4, 8, 16); a clear ValueError for anything else."""
    parts = [p for p in str(text).replace(";", ",").replace("→", ",").replace("->", ",").split(",") if p.strip()]
    if not parts:
        raise ValueError(f"{name}: give at least one frame count, e.g. '4, 8, 16'")
    try:
        sizes = tuple(int(p.strip()) for p in parts)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a comma-separated list of whole numbers") from None
    check_sizes(name, sizes, increasing)
    return sizes


def check_sizes(name: str, sizes, increasing: bool) -> None:
    sizes = tuple(sizes)
    if not sizes or any(int(s) < 1 for s in sizes):
        raise ValueError(f"{name}: frame counts must be at least 1, got {list(sizes)}")
    pairs = list(zip(sizes, sizes[1:]))
    if increasing and any(b < a for a, b in pairs):
        raise ValueError(f"{name}: the expand schedule must not decrease (e.g. 4, 8, 16), got {list(sizes)}")
    if not increasing and any(b > a for a, b in pairs):
        raise ValueError(f"{name}: the shrink schedule must not increase (e.g. 64, 32, 16), got {list(sizes)}")
