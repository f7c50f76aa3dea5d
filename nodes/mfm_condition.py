"""MfM condition builder: one node for the 16 tasks (MfM §3.1, Fig. 3; docs/design.md §9), with a Wan VACE bridge."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..core.mfm.condition import DEPTH_MODES, MASK_SOURCES, build_condition
from ..core.mfm.fitting import FIT_MODES
from ..core.mfm.tasks import (CLIP_FRAMES, DEFAULT_FPS, DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_MOTION,
                              DEFAULT_WIDTH, TASK_LABELS, TASKS, task_from_label)
from ..kit import category, choice_error, first_error, node_id, require_choice, rgb_frames, with_rule
from .io_types import DEPTH_MODEL, MFM_CONDITION

DEFAULT_TASK = next(label for label, key in TASK_LABELS.items() if key == "i2v")


def normalized_preview(depth: torch.Tensor) -> torch.Tensor:
    lo, hi = depth.min(), depth.max()
    scaled = (depth - lo) / (hi - lo) if hi > lo else torch.zeros_like(depth)
    return scaled.unsqueeze(-1).expand(*depth.shape, 3).contiguous()


class MfMConditionBuilder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        tasks = ", ".join(f"{t.key}" for t in TASKS.values())
        return io.Schema(
            node_id=node_id("MfMCondition"),
            display_name="MfM Condition (16 tasks)",
            category=category("conditioning"),
            description=("Builds MfM's unified pixel + depth + mask condition, the task-tagged prompts and a Wan VACE "
                         "control video/masks for: " + tasks + ". Mask polarity: MfM keeps pixels where its mask "
                         "is 1; ComfyUI MASK inputs and outputs here use ComfyUI's polarity (1 = area to generate)."),
            inputs=[
                io.Combo.Input("task", options=list(TASK_LABELS), default=DEFAULT_TASK,
                               tooltip="Which of the 16 tasks. Default image-to-video. Image tasks make one frame. "
                                       "Tasks marked pack-only (image editing) are not in the official script: "
                                       "their tag is the pack's guess and no official output exists for them."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Your prompt; the task tag and additions are appended as MfM expects."),
                with_rule(io.Int.Input("width", default=DEFAULT_WIDTH, min=16, max=8192, step=16,
                                  tooltip=f"Canvas width, a multiple of 16. Default {DEFAULT_WIDTH}, range 16–8192. "
                                          "Swapped with height for portrait inputs (see swap_portrait)."),
                     "multiple_of_16"),
                with_rule(io.Int.Input("height", default=DEFAULT_HEIGHT, min=16, max=8192, step=16,
                                  tooltip=f"Canvas height, a multiple of 16. Default {DEFAULT_HEIGHT}, range 16–8192."),
                     "multiple_of_16"),
                with_rule(io.Int.Input("frames", default=DEFAULT_FRAMES, min=1, max=1001,
                                  tooltip=f"Frames of a video task, 4n+1. Default {DEFAULT_FRAMES} (25 latent "
                                          "frames), range 1–1001. Video manipulation tasks use at most this many "
                                          "of the input's first 4n+1 frames."),
                     "4n+1"),
                io.Combo.Input("fit", options=list(FIT_MODES), default="pad",
                               tooltip="pad (default, official keep_ratio): fit inside, the padding is generated; "
                                       "keep_res (official keep_res, what the official README runs): the fitted "
                                       "size is the canvas, nothing padded; crop: fill the canvas, centre crop "
                                       "(pack-only); stretch: ignore the aspect ratio (pack-only)."),
                io.Boolean.Input("swap_portrait", default=True,
                                 tooltip="Default on (official): a portrait input swaps the canvas's width and "
                                         "height (a portrait canvas turns landscape)."),
                io.Float.Input("motion_score", default=DEFAULT_MOTION, min=0.0, max=20.0, step=0.5,
                               tooltip=f"MfM's motion micro-condition. Default {DEFAULT_MOTION}, range 0–20; image "
                                       "tasks always use 0."),
                io.Int.Input("fps", default=DEFAULT_FPS, min=1, max=120,
                             tooltip=f"The '#FPS: n.' prompt tag. Default {DEFAULT_FPS}, range 1–120."),
                io.Combo.Input("mask_source", options=list(MASK_SOURCES), default=MASK_SOURCES[0],
                               tooltip="Inpainting/outpainting mask: the mask input (default), or a seeded random "
                                       "interior rectangle (1/9–1/4 of the area) or border (1/8–1/4 per side)."),
                io.Int.Input("mask_seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the random masks. Default 0, range 0–2147483647."),
                io.Combo.Input("depth_mode", options=list(DEPTH_MODES), default=DEPTH_MODES[0],
                               tooltip="Where depth goes: at the known frames of generation tasks (default, as MfM "
                                       "was trained), at every frame with pixels, or nowhere."),
                io.Int.Input("clip_frames", default=CLIP_FRAMES, min=1, max=64,
                             tooltip=f"Known frames of video extension and clip transition. Default {CLIP_FRAMES} "
                                     "(official), range 1–64 (paper recipes: 8–16)."),
                io.Image.Input("image", optional=True,
                               tooltip="The image: first frame (i2v, first-last), or the image of image tasks."),
                io.Image.Input("last_image", optional=True, tooltip="Last frame of first-last-frame (flf2v)."),
                io.Image.Input("video", optional=True,
                               tooltip="Frames of the video to extend, edit, colorize, upscale, inpaint or outpaint; "
                                       "clip A of a clip transition."),
                io.Image.Input("video_b", optional=True, tooltip="Clip B of a clip transition (flc2v)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Inpainting/outpainting mask in ComfyUI polarity: 1 = area to generate. One "
                                      "mask for all frames or one per frame, the input's size."),
                io.Boolean.Input("official_canvas", default=True, optional=True,
                                 tooltip="Default on: image tasks use the official script's canvas (text-to-image "
                                         "and colorization 1024×1024, super-resolution 1280×1280) instead of "
                                         "width × height."),
                DEPTH_MODEL.Input("depth_model", optional=True,
                                                          tooltip="Depth Anything V2, computed on the fitted known "
                                                                  "frames as the official pipeline does."),
            ],
            outputs=[
                MFM_CONDITION.Output(display_name="condition"),
                io.String.Output(display_name="positive"),
                io.String.Output(display_name="negative"),
                io.Image.Output(display_name="preview", tooltip="The masked condition pixels."),
                io.Mask.Output(display_name="generate_mask", tooltip="1 = generated (ComfyUI polarity)."),
                io.Image.Output(display_name="depth_preview"),
                io.Image.Output(display_name="vace_control_video"),
                io.Mask.Output(display_name="vace_control_masks"),
                io.Int.Output(display_name="width"),
                io.Int.Output(display_name="height"),
                io.Int.Output(display_name="length"),
                io.Float.Output(display_name="cfg", tooltip="The task's guidance (paper: 9; the official "
                                                            "colorization override: 7): wire it to the sampler's cfg."),
            ],
        )

    @classmethod
    def validate_inputs(cls, task=None):
        return first_error(choice_error("task", task, TASK_LABELS))

    @classmethod
    def execute(cls, task, prompt, width, height, frames, fit, swap_portrait, motion_score, fps, mask_source, mask_seed,
                depth_mode, clip_frames, image=None, last_image=None, video=None, video_b=None, mask=None,
                official_canvas=True, depth_model=None) -> io.NodeOutput:
        for name, value, options in (("fit", fit, FIT_MODES), ("mask_source", mask_source, MASK_SOURCES),
                                     ("depth_mode", depth_mode, DEPTH_MODES)):
            require_choice(name, value, options)
        image, last_image, video, video_b = (rgb_frames(frames_in, name, "MfM Condition") for name, frames_in in
                                             (("image", image), ("last_image", last_image), ("video", video),
                                              ("video_b", video_b)))
        depth_fn = None
        if depth_model is not None:
            from ..model_loaders.depth_anything import estimate_depth

            def depth_fn(frames_bhwc):
                return estimate_depth(depth_model, frames_bhwc)
        keep = None if mask is None else 1.0 - mask.float()
        cond = build_condition(task_from_label(task), prompt, width, height, frames, image=image,
                               last_image=last_image, video=video, video_b=video_b, keep_mask=keep,
                               mask_source=mask_source, seed=mask_seed, fit=fit, swap_portrait=swap_portrait,
                               depth_mode=depth_mode, depth_fn=depth_fn, clip_frames=clip_frames,
                               motion_score=motion_score, fps=fps, official_canvas=official_canvas)
        for warning in cond.warnings:
            logging.warning("UniCascade: MfM Condition: %s", warning)
        control, control_masks = cond.vace_control()
        preview = (cond.pixels + 1) / 2
        return io.NodeOutput(cond, cond.positive, cond.negative, preview, 1.0 - cond.keep,
                             normalized_preview(cond.depth), control, control_masks,
                             cond.pixels.shape[2], cond.pixels.shape[1], cond.frames, task_from_label(task).cfg)
