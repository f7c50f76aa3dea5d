"""Keyframe retrieval on cached embeddings (UniVid §2.4 "Policy class", A.6 eq. 6, 8, 9).

Embeddings are L2-normalised, so similarity is a dot product. Every selection is returned in temporal order (the
order the Actor sees); ties go to the earlier frame.
"""
from __future__ import annotations

import torch


def uniform_indices(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)``, first and last included; all of them when
    ``total <= count``. Strictly increasing (no duplicates)."""
    if total < 1:
        raise ValueError("cannot sample frames from an empty video")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if total <= count:
        return list(range(total))
    if count == 1:
        return [0]
    step = (total - 1) / (count - 1)
    return [int(round(k * step)) for k in range(count)]


def normalize(vectors: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (float32); a zero row stays zero."""
    vectors = vectors.float()
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def relevance(frame_embeddings: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
    """sim(i, s) = ⟨v̂_i, φ̂(s)⟩ for every frame (eq. 6)."""
    return normalize(frame_embeddings) @ normalize(text_embedding.reshape(1, -1)).squeeze(0)


def pairwise(frame_embeddings: torch.Tensor) -> torch.Tensor:
    """sim(i, j) between frames."""
    v = normalize(frame_embeddings)
    return v @ v.T


def _best(candidates: list[int], scores: torch.Tensor) -> int:
    """The candidate with the highest score; on a tie the earliest frame."""
    top = scores.max()
    for c, s in zip(candidates, scores.tolist()):
        if s == top:
            return c
    return candidates[int(torch.argmax(scores))]  # NaN scores: any defined choice


def expand(rel: torch.Tensor, selected: list[int], target: int) -> list[int]:
    """Add the ``target − |S|`` most relevant unseen frames (eq. 8); nothing when the set is already that big."""
    chosen = set(selected)
    missing = target - len(chosen)
    if missing > 0:
        unseen = [i for i in range(len(rel)) if i not in chosen]
        ranked = sorted(unseen, key=lambda i: (-float(rel[i]), i))
        chosen.update(ranked[:missing])
    return sorted(chosen)


def mmr_shrink(rel: torch.Tensor, sim: torch.Tensor, candidates: list[int], target: int,
               lam: float) -> list[int]:
    """Greedy Maximal Marginal Relevance down to ``target`` frames (eq. 9):
    argmax_i λ·sim(i, s) − (1−λ)·max_{j∈S} sim(i, j); the first pick is pure relevance."""
    remaining = sorted(set(candidates))
    if target >= len(remaining):
        return remaining
    picked: list[int] = []
    while len(picked) < target:
        if not picked:
            scores = rel[remaining]
        else:
            redundancy = sim[remaining][:, picked].max(dim=1).values
            scores = lam * rel[remaining] - (1.0 - lam) * redundancy
        best = _best(remaining, scores)
        picked.append(best)
        remaining.remove(best)
    return sorted(picked)


def select(mode: str, rel: torch.Tensor, sim: torch.Tensor, working: list[int], target: int,
           lam: float) -> list[int]:
    """One round's action: expand (static) grows ``working``; shrink (dynamic) starts from the whole pool and
    prunes the working set by MMR."""
    if mode == "static":
        return expand(rel, working, target)
    if mode == "dynamic":
        candidates = working if working else list(range(len(rel)))
        return mmr_shrink(rel, sim, candidates, target, lam)
    raise ValueError(f"mode must be 'static' or 'dynamic', got {mode!r}")
