"""The Pyramid Reflection loop (UniVid §2.4, Alg. 1, A.6) with the fallbacks of docs/design.md §11.

Per round r ≤ R: reconfigure the working set W from the cached embeddings (expand for static questions, MMR
shrink for dynamic ones), the Actor answers from W in temporal order + the global caption C_g, the Evaluator
scores the answer, accept if verdict = accept or score ≥ τ, else the Reflector rewrites the search text (an empty
rewrite keeps the old one). No accepted round: answer from C_g; if that says "not enough evidence" or fails,
the last round's answer (static) or the first round's (dynamic).

Error policy: the vision roles (Actor, frame notes) raise on a ``BackendError``; the text roles fall back
(router → keywords, summary → joined notes, evaluator → reject, reflector → keep the search text, global
answer → the round fallback). Every fallback is written to the trace.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch

from . import prompts
from .backend import BackendError, ChatBackend, ChatRequest, describe
from .params import ReflectionParams
from .parsing import (NOT_ENOUGH, Evaluation, keyword_question_type, parse_evaluation, parse_question_type,
                      parse_refinement, says_not_enough)
from .retrieval import pairwise, relevance, select, uniform_indices

MODE_ACTION = {"static": "expand", "dynamic": "shrink"}


@dataclass
class Pool:
    """The N uniformly sampled frames of a video, with where they come from."""
    frames: torch.Tensor                  # [N, H, W, 3]
    frame_ids: list[int]                  # index of each pool frame in the video
    total_frames: int
    fps: float | None = None

    def __post_init__(self):
        if len(self.frame_ids) != self.frames.shape[0]:
            raise ValueError("pool: one frame id per frame is needed")

    def __len__(self) -> int:
        return len(self.frame_ids)

    def label(self, pos: int) -> str:
        fid = self.frame_ids[pos]
        return f"frame {fid} at {fid / self.fps:.2f} s" if self.fps else f"frame {fid} of {self.total_frames}"

    def ids(self, positions: list[int]) -> list[int]:
        return [self.frame_ids[p] for p in positions]

    def span(self, positions: list[int]) -> str:
        if not positions:
            return "none"
        labels = [self.label(p) for p in positions]
        if len(labels) <= 6:
            return f"{len(labels)} frames: " + "; ".join(labels)
        return f"{len(labels)} frames from {labels[0]} to {labels[-1]}"


def sample_pool(frames: torch.Tensor, pool_size: int, fps: float | None = None) -> Pool:
    """Uniformly sample ``pool_size`` frames (all of them for a shorter video)."""
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError("the video has no frames")
    ids = uniform_indices(frames.shape[0], pool_size)
    return Pool(frames[ids], ids, frames.shape[0], fps)


@dataclass
class Models:
    """Which backend plays which role (the paper used a VLM for the Actor and two hosted LLMs)."""
    vision: ChatBackend       # Actor and per-frame notes: must take images
    text: ChatBackend         # router, caption summary, Evaluator, global answer
    reflector: ChatBackend

    @staticmethod
    def of(vision, text=None, reflector=None) -> "Models":
        text = text or vision
        return Models(vision, text, reflector or text)


@dataclass
class GlobalCaption:
    caption: str
    notes: list[str]
    positions: list[int]          # pool positions of the seed frames
    summary_fallback: bool = False


@dataclass
class Result:
    answer: str
    source: str
    keyframes: list[int]          # pool positions, temporal order
    trace: dict
    caption: GlobalCaption        # for a cache: the same video asked again reuses it


class _Calls:
    """Every model call goes through here: counted, timed out into fallbacks or errors, progress ticked."""

    def __init__(self, step: Callable[[], None] | None):
        self.count: Counter = Counter()
        self.seconds: Counter = Counter()
        self.images_to_actor = 0
        self.errors: list[dict] = []
        self.step = step or (lambda: None)

    def __call__(self, backend: ChatBackend, request: ChatRequest, fallback: bool) -> str | None:
        self.count[request.role] += 1
        if request.role == "actor":
            self.images_to_actor += len(request.images)
        start = time.perf_counter()
        try:
            reply = backend.chat(request)
        except BackendError as e:
            if not fallback:
                raise BackendError(f"{request.role} ({describe(backend)}) failed: {e}") from e
            self.errors.append({"role": request.role, "backend": describe(backend), "error": str(e)})
            return None
        finally:
            self.seconds[request.role] += time.perf_counter() - start
            self.step()
        return "" if reply is None else str(reply)


def check_models(models: Models) -> None:
    if not getattr(models.vision, "supports_images", False):
        raise ValueError(f"vlm: {describe(models.vision)} does not take images; the Actor and the frame notes need "
                         "a vision-language model (a local VLM folder, or an endpoint with 'vision' on)")


def build_global_caption(pool: Pool, models: Models, params: ReflectionParams, calls: _Calls) -> GlobalCaption:
    """C_g: a note per seed frame (vision model), then one summary (text model) — Alg. 1 line 2. Without a
    summary (its call failed or came back empty) the notes themselves, joined, stand in."""
    positions = uniform_indices(len(pool), params.caption_frames)
    system, user = prompts.frame_note()
    notes = []
    for pos in positions:
        request = ChatRequest("note", system, user, [pool.frames[pos]], params.max_new_tokens, params.image_max_side)
        reply = calls(models.vision, request, fallback=False)
        notes.append(" ".join(reply.split()))
    system, user = prompts.caption_summary(notes)
    summary = calls(models.text, ChatRequest("summary", system, user, [], params.max_new_tokens), fallback=True)
    summary = " ".join((summary or "").split())
    if summary:
        return GlobalCaption(summary, notes, positions)
    joined = " ".join(n for n in notes if n)[:2000]
    return GlobalCaption(joined, notes, positions, summary_fallback=True)


def route(question: str, models: Models, params: ReflectionParams, calls: _Calls) -> tuple[str, str, str | None]:
    """(mode, how it was decided, the router's reply)."""
    forced = params.forced_mode()
    if forced:
        return forced, "set by question_type", None
    system, user = prompts.question_type(question)
    reply = calls(models.text, ChatRequest("router", system, user, [], min(params.max_new_tokens, 128)),
                  fallback=True)
    if reply is None:
        return keyword_question_type(question), "keywords (router call failed)", None
    mode = parse_question_type(reply)
    if mode is None:
        return keyword_question_type(question), "keywords (router reply unreadable)", reply
    return mode, "router", reply


def run(question: str, pool: Pool, frame_embeddings: torch.Tensor, embed_text: Callable[[str], torch.Tensor],
        models: Models, params: ReflectionParams, caption: GlobalCaption | None = None,
        step: Callable[[], None] | None = None) -> Result:
    """Answer ``question`` about the pool's video. ``frame_embeddings`` [N, D] are the pool frames' cached image
    embeddings; ``embed_text`` embeds a search text; ``caption`` may come from a cache (else it is built)."""
    question = " ".join(str(question or "").split())
    if not question:
        raise ValueError("question is empty: type what you want to know about the video")
    if frame_embeddings.shape[0] != len(pool):
        raise ValueError(f"{frame_embeddings.shape[0]} embeddings for {len(pool)} pool frames")
    check_models(models)
    calls = _Calls(step)
    caption_cached = caption is not None
    if caption is None:
        caption = build_global_caption(pool, models, params, calls)
    mode, mode_source, router_reply = route(question, models, params, calls)

    sim = pairwise(frame_embeddings)
    text_cache: dict[str, torch.Tensor] = {}

    def rel_for(text: str) -> torch.Tensor:
        if text not in text_cache:
            text_cache[text] = relevance(frame_embeddings, embed_text(text))
        return text_cache[text]

    search = question
    working: list[int] = []
    rounds: list[dict] = []
    final = None
    for r in range(params.max_rounds):
        target = params.round_size(mode, r, len(pool))
        working = select(mode, rel_for(search), sim, working, target, params.mmr_lambda)   # temporal order
        labels = [pool.label(p) for p in working]
        system, user = prompts.actor(question, caption.caption, labels)
        answer = calls(models.vision, ChatRequest("actor", system, user, [pool.frames[p] for p in working],
                                                  params.max_new_tokens, params.image_max_side),
                       fallback=False).strip()
        system, user = prompts.evaluator(question, caption.caption, answer, pool.span(working),
                                         params.accept_threshold)
        reply = calls(models.text, ChatRequest("evaluator", system, user, [], min(params.max_new_tokens, 160)),
                      fallback=True)
        if reply is None:
            evaluation = Evaluation(0.0, "reject", "evaluator call failed", readable=False)
        else:
            evaluation = parse_evaluation(reply)
        accepted = evaluation.accepted(params.accept_threshold)
        record = {"round": r + 1, "mode": MODE_ACTION[mode], "search_text": search, "frames": pool.ids(working),
                  "answer": answer, "score": evaluation.score, "verdict": evaluation.verdict,
                  "brief_reason": evaluation.brief_reason, "evaluation_readable": evaluation.readable,
                  "accepted": accepted, "refined_query": None}
        if not evaluation.readable and reply is not None:
            record["evaluator_reply"] = reply[:300]
        rounds.append(record)
        record["_positions"] = list(working)
        if accepted:
            final = (answer, f"round {r + 1} (accepted)", list(working))
            break
        if r + 1 < params.max_rounds:
            system, user = prompts.reflector(question, caption.caption, search, answer, evaluation.as_json(),
                                             params.accept_threshold)
            reply = calls(models.reflector, ChatRequest("reflector", system, user, [],
                                                        min(params.max_new_tokens, 96)), fallback=True)
            refined, readable = parse_refinement(reply) if reply is not None else ("", False)
            record["refined_query"] = refined
            record["refinement_readable"] = readable
            if not readable and reply is not None:
                record["reflector_reply"] = reply[:300]
            if refined:
                search = refined

    global_reply = None
    if final is None:
        system, user = prompts.global_answer(question, caption.caption)
        global_reply = calls(models.text, ChatRequest("global", system, user, [], params.max_new_tokens),
                             fallback=True)
        final = _unaccepted_final(global_reply, rounds, mode, caption)

    answer, source, keyframes = final
    for rec in rounds:
        rec.pop("_positions", None)
    trace = {
        "question": question,
        "mode": mode,
        "mode_source": mode_source,
        "router_reply": router_reply,
        "video": {"frames": pool.total_frames, "fps": pool.fps, "pool_frames": pool.frame_ids},
        "global_caption": caption.caption,
        "caption_frames": pool.ids(caption.positions),
        "caption_from": "cache" if caption_cached else ("joined frame notes (summary failed)"
                                                        if caption.summary_fallback else "summary of frame notes"),
        "rounds": rounds,
        "global_answer": global_reply,
        "final": {"answer": answer, "source": source, "keyframes": pool.ids(keyframes)},
        "cost": {"llm_calls": dict(calls.count), "llm_calls_total": sum(calls.count.values()),
                 "images_to_actor": calls.images_to_actor,
                 "seconds_by_role": {k: round(v, 3) for k, v in calls.seconds.items()}},
        "errors": calls.errors,
        "params": {"pool_size": params.pool_size, "caption_frames": params.caption_frames,
                   "static_sizes": list(params.static_sizes), "dynamic_sizes": list(params.dynamic_sizes),
                   "mmr_lambda": params.mmr_lambda, "accept_threshold": params.accept_threshold,
                   "max_rounds": params.max_rounds, "question_type": params.question_type},
    }
    return Result(answer, source, keyframes, trace, caption)


def _unaccepted_final(global_reply: str | None, rounds: list[dict], mode: str,
                      caption: GlobalCaption) -> tuple[str, str, list[int]]:
    """No round accepted (docs/design.md §11): the caption answer; if it has not enough evidence or failed, the last
    round's answer for a static question, the first round's for a dynamic one (skipping empty answers)."""
    text = (global_reply or "").strip()
    if text and not says_not_enough(text):
        return text, "global caption (no round accepted)", list(caption.positions)
    order = list(reversed(rounds)) if mode == "static" else list(rounds)
    which = "last" if mode == "static" else "first"
    chosen = next((rec for rec in order if rec["answer"]), None)
    if chosen is None:
        return NOT_ENOUGH, "no usable answer from any round or the caption", list(caption.positions)
    return (chosen["answer"], f"fallback: round {chosen['round']} ({which} round answer, {mode} question)",
            chosen["_positions"])


def expected_calls(params: ReflectionParams, caption_cached: bool, pool: int) -> int:
    """Upper bound of model calls for a progress bar."""
    caption = 0 if caption_cached else min(params.caption_frames, pool) + 1
    return caption + 1 + params.max_rounds * 3 + 1
