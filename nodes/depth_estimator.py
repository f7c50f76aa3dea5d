"""Depth Anything V2 depth of video frames, raw (as MfM uses it) or normalised per frame / per sequence."""
from __future__ import annotations

import comfy.model_management
from comfy_api.latest import io

from ..core.depth.normalize import NORMALIZATIONS, normalize_depth, preview_image
from ..kit import category, choice_error, first_error, node_id, rgb_frames
from ..model_loaders import depth_anything
from ..model_loaders.depth_anything import CPU_BATCH, GPU_BATCH, default_batch_size, estimate_depth
from .folder_loader import FolderModelLoader
from .io_types import DEPTH, DEPTH_MODEL

MAX_BATCH = 256


class DepthEstimator(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        batch = default_batch_size(comfy.model_management.get_torch_device())
        return io.Schema(
            node_id=node_id("DepthEstimator"),
            display_name="Depth Estimator (Depth Anything V2)",
            category=category("conditioning"),
            description=("Relative inverse depth (larger = nearer) of every frame, at the frames' size. Frames run "
                         "in micro-batches, so memory grows with batch_size, not with the video's length."),
            inputs=[
                DEPTH_MODEL.Input("depth_model", tooltip="From the Depth Anything V2 Loader."),
                io.Image.Input("images", tooltip="The frames of a video (or one image), RGB (an alpha channel is "
                                                        "dropped, with a log line)."),
                io.Combo.Input("normalization", options=list(NORMALIZATIONS), default=NORMALIZATIONS[0],
                               tooltip="Default raw: as predicted, unnormalised (what MfM uses). per frame: each "
                                       "frame scaled to 0–1 on its own (flickers in videos). per sequence: one "
                                       "0–1 scale over all frames (no flicker)."),
                io.Boolean.Input("invert", default=False,
                                 tooltip="Default off: larger = nearer (white = near in the preview). On: larger = "
                                         "farther (normalised: 1 − d; raw: mirrored within its range)."),
                io.Int.Input("batch_size", default=batch, min=1, max=MAX_BATCH,
                             tooltip=f"Frames per micro-batch. Default {batch} on this device ({GPU_BATCH} on a "
                                     f"GPU, where batches are faster where memory allows; {CPU_BATCH} on a CPU, "
                                     f"where they were slower), range 1–{MAX_BATCH}. The result is the same."),
            ],
            outputs=[
                DEPTH.Output(display_name="depth", tooltip="Depth [frames, height, width] in the chosen mode."),
                io.Image.Output(display_name="preview",
                                tooltip="Grey depth: the normalised values, or raw depth scaled to 0–1 over the "
                                        "whole sequence."),
            ],
        )

    @classmethod
    def validate_inputs(cls, normalization=None):
        return first_error(choice_error("normalization", normalization, NORMALIZATIONS))

    @classmethod
    def execute(cls, depth_model, images, normalization, invert, batch_size) -> io.NodeOutput:
        images = rgb_frames(images, "images", "Depth Estimator")
        depth = normalize_depth(estimate_depth(depth_model, images, batch_size), normalization, invert, inplace=True)
        return io.NodeOutput(depth, preview_image(depth, normalization))


class DepthAnythingLoader(FolderModelLoader):
    loader_id = "DepthAnythingLoader"
    loader_title = "Depth Anything V2 Loader"
    loader_help = ("Loads a Depth Anything V2 Hugging Face folder (config.json, *.safetensors, "
                   "preprocessor_config.json; e.g. Depth-Anything-V2-Small-hf) from models/depth_anything "
                   "for the Depth Estimator and the MfM condition. Safetensors only.")
    model_tooltip = ("A sub-folder of models/depth_anything (or of a depth_anything path in extra_model_paths.yaml) "
                     "that holds config.json and *.safetensors.")
    model_roots = staticmethod(depth_anything.model_roots)
    list_models = staticmethod(depth_anything.list_models)
    load = staticmethod(depth_anything.load_depth_model)

    @staticmethod
    def output():
        return DEPTH_MODEL.Output(display_name="depth_model")
