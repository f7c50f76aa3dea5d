"""Pyramid Reflection video QA (UniVid §2.4, Alg. 1): SigLIP2 keyframe retrieval + Actor/Evaluator/Reflector loop.

Thin: frames in, the loop of core/reflection run on the given backends, answer/trace/keyframes out. Pool frame
embeddings and the global caption are cached by the frames' content, so asking again about the same video (a
new question, another queued prompt) embeds nothing and captions nothing again.
"""
from __future__ import annotations

import json
import logging
import re

import comfy.utils
import torch
from comfy_api.latest import io

from ..core.reflection.cache import LRUCache, content_digest
from ..core.reflection.loop import Models, expected_calls, run, sample_pool
from ..core.reflection.params import (ACCEPT_THRESHOLD, CAPTION_FRAMES, DYNAMIC_SIZES, EMBED_BATCH, IMAGE_MAX_SIDE,
                                      MAX_NEW_TOKENS, MAX_ROUNDS, MMR_LAMBDA, POOL_SIZE, QUESTION_TYPES,
                                      STATIC_SIZES, ReflectionParams, parse_sizes)
from ..kit import category, node_id, plain_errors, require_choice, rgb_frames
from .io_types import LLM, SIGLIP
from .video import video_frames

EMBEDDINGS = LRUCache(32)   # (siglip, frames digest) -> [N, D]
CAPTIONS = LRUCache(32)     # (vision model, text model, frames digest, caption settings) -> GlobalCaption
NUMBER_LIST = re.compile(r"\[\s*((?:-?[\d.]+,\s*)*-?[\d.]+)\s*\]")
PROMPT_VERSION = 1          # bump when the prompt texts change (cached captions then no longer apply)


def trace_text(trace: dict) -> str:
    """Indented JSON with lists of numbers (frame indices) kept on one line. Only indentation is touched: strings
    in JSON hold no raw line breaks."""
    def one_line(m):
        return "[" + " ".join(m.group(1).split()) + "]" if "\n" in m.group(0) else m.group(0)
    return NUMBER_LIST.sub(one_line, json.dumps(trace, indent=1, ensure_ascii=False))


def sizes_text(sizes) -> str:
    return ", ".join(str(s) for s in sizes)


def frames_of(images, video) -> tuple[torch.Tensor, float | None]:
    """IMAGE frames [T, H, W, 3] and the frame rate (None for an IMAGE batch)."""
    if (images is None) == (video is None):
        raise ValueError("connect either images (an IMAGE batch) or video (a VIDEO), exactly one of them")
    fps = None
    if video is not None:
        images, fps = video_frames(video, "video", "Pyramid Reflection QA")
    else:
        images = rgb_frames(images, "images", "Pyramid Reflection QA")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images: expected video frames [frames, height, width, 3], got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise ValueError("the video has no frames: there is nothing to answer the question from")
    if images.shape[-1] not in (3, 4):
        raise ValueError(f"images: frames have {images.shape[-1]} channels; RGB frames are needed")
    return images[..., :3], fps


class PyramidReflectionQA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("PyramidReflectionQA"),
            display_name="Pyramid Reflection Video QA (UniVid)",
            category=category("understanding"),
            description=(
                "Answers a question about a video (UniVid §2.4). Samples a pool of frames, embeds them once with "
                "SigLIP2, writes a global caption from evenly spaced frames, routes the question (static: expand "
                "4→8→16 most relevant frames; dynamic: shrink 64→32→16 by MMR), and loops Actor → Evaluator → "
                "Reflector for up to R rounds. No round accepted: the answer from the global caption, else the "
                "last (static) or first (dynamic) round's answer. The trace records every round."),
            inputs=[
                SIGLIP.Input("siglip", tooltip="From the SigLIP2 Loader: ranks frames against the search text."),
                LLM.Input("vlm", tooltip="A vision-language model: the Actor (answers from the keyframes) and the "
                                         "per-frame notes of the global caption."),
                io.String.Input("question", multiline=True, default="",
                                tooltip="What you want to know about the video."),
                io.Image.Input("images", optional=True,
                               tooltip="The video as an IMAGE batch (frames in order). Connect this or video."),
                io.Video.Input("video", optional=True,
                               tooltip="A VIDEO (e.g. from Load Video); its frame rate gives times in the trace."),
                LLM.Input("llm", optional=True,
                          tooltip="Text model for routing, the caption summary, the Evaluator and the caption "
                                  "answer. Default (unconnected): the vlm."),
                LLM.Input("reflector", optional=True,
                          tooltip="Model that rewrites the search text. Default (unconnected): the llm. The paper "
                                  "found a model of another family than the Evaluator helps a little."),
                io.Combo.Input("question_type", options=list(QUESTION_TYPES), default=QUESTION_TYPES[0],
                               tooltip="Default auto: the llm classifies the question (falls back to keywords when "
                                       "its reply is unreadable). static/dynamic force a route."),
                io.Int.Input("pool_size", default=POOL_SIZE, min=1, max=1024,
                             tooltip=f"Frames sampled uniformly and embedded once (N). Default {POOL_SIZE} "
                                     "(paper), range 1–1024; a shorter video uses all its frames."),
                io.Int.Input("caption_frames", default=CAPTION_FRAMES, min=1, max=128,
                             tooltip=f"Evenly spaced pool frames described for the global caption. Default "
                                     f"{CAPTION_FRAMES} (paper), range 1–128; one vlm call each (cached per video)."),
                io.String.Input("static_sizes", default=sizes_text(STATIC_SIZES),
                                tooltip=f"Expand schedule: frames per round for static questions. Default "
                                        f"{sizes_text(STATIC_SIZES)} (paper); must not decrease."),
                io.String.Input("dynamic_sizes", default=sizes_text(DYNAMIC_SIZES),
                                tooltip=f"Shrink schedule: frames per round for dynamic questions. Default "
                                        f"{sizes_text(DYNAMIC_SIZES)} (paper); must not increase."),
                io.Float.Input("mmr_lambda", default=MMR_LAMBDA, min=0.0, max=1.0, step=0.05,
                               tooltip=f"MMR λ: relevance vs diversity when shrinking. Default {MMR_LAMBDA} "
                                       "(paper), range 0–1 (1 = relevance only)."),
                io.Float.Input("accept_threshold", default=ACCEPT_THRESHOLD, min=0.0, max=1.0, step=0.05,
                               tooltip=f"τ: accept when the Evaluator's score reaches it (or its verdict is "
                                       f"accept). Default {ACCEPT_THRESHOLD} (paper), range 0–1."),
                io.Int.Input("max_rounds", default=MAX_ROUNDS, min=1, max=10,
                             tooltip=f"R: at most this many rounds. Default {MAX_ROUNDS} (paper), range 1–10; "
                                     "rounds past the schedule keep its last size."),
                io.Int.Input("max_new_tokens", default=MAX_NEW_TOKENS, min=8, max=4096,
                             tooltip=f"Longest reply of any model call (JSON roles use less). Default "
                                     f"{MAX_NEW_TOKENS}, range 8–4096."),
                io.Int.Input("image_max_side", default=IMAGE_MAX_SIDE, min=64, max=4096,
                             tooltip=f"Frames sent to the vlm are downscaled to this longest side (never "
                                     f"upscaled). Default {IMAGE_MAX_SIDE}, range 64–4096."),
                io.Int.Input("embed_batch", default=EMBED_BATCH, min=1, max=1024,
                             tooltip=f"Frames per SigLIP2 batch. Default {EMBED_BATCH} (paper), range 1–1024."),
            ],
            outputs=[
                io.String.Output(display_name="answer"),
                io.String.Output(display_name="trace", tooltip="JSON: mode, caption, every round's frames, "
                                                               "answer, score, verdict and refined query, costs."),
                io.Image.Output(display_name="keyframes",
                                tooltip="The frames behind the answer, in temporal order, at full size."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, question=None):
        """Only the question (see kit.py, input rules); the other values are checked when the node runs, before
        any frame is read."""
        if question is not None and not str(question).strip():
            return "question is empty: type what you want to know about the video"
        return True

    @classmethod
    @plain_errors
    def execute(cls, siglip, vlm, question, question_type, pool_size, caption_frames, static_sizes, dynamic_sizes,
                mmr_lambda, accept_threshold, max_rounds, max_new_tokens, image_max_side, embed_batch,
                images=None, video=None, llm=None, reflector=None) -> io.NodeOutput:
        if not str(question or "").strip():
            raise ValueError("question is empty: type what you want to know about the video")
        require_choice("question_type", question_type, QUESTION_TYPES)
        params = ReflectionParams(
            pool_size=pool_size, caption_frames=caption_frames,
            static_sizes=parse_sizes("static_sizes", static_sizes, True),
            dynamic_sizes=parse_sizes("dynamic_sizes", dynamic_sizes, False),
            mmr_lambda=mmr_lambda, accept_threshold=accept_threshold, max_rounds=max_rounds,
            question_type=question_type, max_new_tokens=max_new_tokens, image_max_side=image_max_side)
        frames, fps = frames_of(images, video)
        models = Models.of(vlm, llm, reflector)
        pool = sample_pool(frames, params.pool_size, fps)
        digest = content_digest(pool.frames)

        embedding_key = (siglip.cache_key, digest)
        embeddings = EMBEDDINGS.get(embedding_key)
        computed = 0
        if embeddings is None:
            embeddings = siglip.embed_images(pool.frames, embed_batch)
            EMBEDDINGS.put(embedding_key, embeddings)
            computed = embeddings.shape[0]

        caption_key = (models.vision.cache_key, models.text.cache_key, digest, params.caption_frames,
                       params.max_new_tokens, params.image_max_side, PROMPT_VERSION)
        caption = CAPTIONS.get(caption_key)
        bar = comfy.utils.ProgressBar(expected_calls(params, caption is not None, len(pool)))
        result = run(question, pool, embeddings, lambda text: siglip.embed_texts([text])[0], models, params,
                     caption=caption, step=lambda: bar.update(1))
        if not result.caption.summary_fallback:  # a caption made without its summary is tried again next time
            CAPTIONS.put(caption_key, result.caption)

        trace = result.trace
        trace["cost"]["image_embeddings_computed"] = computed
        trace["cost"]["embedding_cache"] = "miss" if computed else "hit"
        for error in trace["errors"]:
            logging.warning("UniCascade: Pyramid Reflection: %s call failed, fallback used: %s", error["role"],
                            error["error"])
        trace_json = trace_text(trace)
        keyframes = frames[[pool.frame_ids[p] for p in result.keyframes]].clone()
        panel = [f"Answer: {result.answer}", f"Source: {result.source}", "", "Trace:", trace_json]
        return io.NodeOutput(result.answer, trace_json, keyframes, ui={"text": panel})
