"""Which rank denoises which window (docs/design.md §4; multi-GPU tiling).

The windows of a step are independent until they are blended, so a step spreads over ranks with one reduction.
A window's cost is its transformer work: per block, the linear layers grow as 24·n·d² (q, k, v, o and a 4d FFN)
and attention as 4·n²·d, for n tokens (the window's patches plus the reference tokens every window carries) of
width d; so cost ∝ n·(6d + n). Shares are balanced by the longest-processing-time rule: windows in decreasing
cost, each to the rank with the least work so far (ties: the lower window index, the lower rank) — within 4/3 of
the optimum makespan (Graham 1969).
"""
from __future__ import annotations

import math


def window_tokens(frames: int, height: int, width: int, patch: tuple[int, int, int], reference_tokens: int = 0) -> int:
    """Tokens of a latent window of frames × height × width (padded up to the patch) plus the reference tokens."""
    pt, ph, pw = patch
    return math.ceil(frames / pt) * math.ceil(height / ph) * math.ceil(width / pw) + reference_tokens


def window_cost(tokens: int, dim: int) -> float:
    """Relative transformer cost of one evaluation on ``tokens`` tokens of width ``dim``: n·(6d + n)."""
    return float(tokens) * (6.0 * dim + tokens)


def balance(costs: list[float], ranks: int) -> list[list[int]]:
    """Window indices per rank (each list in increasing order), balanced by cost (LPT)."""
    if ranks < 1:
        raise ValueError(f"ranks must be ≥ 1, got {ranks}")
    load = [0.0] * ranks
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(ranks), key=lambda r: (load[r], r))
        shares[rank].append(index)
        load[rank] += costs[index]
    return [sorted(s) for s in shares]
