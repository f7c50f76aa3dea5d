"""The 16 MfM tasks (paper §4, Appendix A) with the facts of the official inference code
(docs/design.md §8–9; docs/mfm.md).

Each task has the name the model was trained to read after ``#task:``, whether it is an image (1 frame) or a
video task, whether it *generates* frames without a frame-wise condition (depth is then written only at the
known frames), which frames are known, its prompt additions, negative prompt and guidance.

"image editing" (paper Appendix A, task 16) is absent from the official script's task map: its tag is the
pack's own (following "video editing"), labelled "pack-only" in the task list, and the official pipeline's
output cannot be reproduced for it.
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_NEGATIVE = ("static, watermark, subtitles, scene change, flickering, distorted, discontinuous, bad anatomy, "
                    "bad hands, missing fingers, cropped, ugly, blurry, low resolution, low quality, motionless, "
                    "cartoon, animation, oil painting, #reverse, #motion: super-fast, #backplay, human distortion, "
                    "unnatural movement")
COLOR_ADDED = "natural, vibrant"
COLOR_NEGATIVE = "over-saturated, grayscale, b&w, color bleeding, plain"
SR_ADDED = "clean, extremely detailed, high-resolution, 4k"
SR_NEGATIVE = "blurry, dotted, noise, jpeg compression, raster lines, unclear, lowres, over-smoothed"

DEFAULT_FRAMES = 97          # official window: 97 frames = 25 latent frames
DEFAULT_WIDTH, DEFAULT_HEIGHT = 640, 352
DEFAULT_STEPS, DEFAULT_CFG = 50, 9.0   # paper; the official script's defaults disagree (25 steps, CFG 6)
DEFAULT_MOTION = 5.0
DEFAULT_FPS = 16
CLIP_FRAMES = 8              # extension / clip-transition frames (official default; paper recipes use 8–16)


@dataclass(frozen=True)
class Task:
    key: str
    name: str                 # the #task: tag
    image: bool               # one frame, motion score 0
    generation: bool          # frames without frame-wise condition: depth only at known frames
    needs: tuple[str, ...]    # inputs the builder requires
    added: str = "#FPS: {fps}."
    negative: str = DEFAULT_NEGATIVE
    cfg: float = DEFAULT_CFG
    size: tuple[int, int] | None = None   # (width, height) official default for image tasks
    official_tag: bool = True


TASKS: dict[str, Task] = {t.key: t for t in [
    Task("t2v", "text-to-video", False, True, ()),
    Task("i2v", "image-to-video", False, True, ("image",)),
    Task("vext", "video extending", False, True, ("video",)),
    Task("flf2v", "image-to-image transition", False, True, ("image", "last_image")),
    Task("flc2v", "video-to-video transition", False, True, ("video", "video_b")),
    Task("vedit", "video editing", False, False, ("video",)),
    Task("vcolor", "video colorization", False, False, ("video",), added=COLOR_ADDED, negative=COLOR_NEGATIVE,
         cfg=7.0),
    Task("vsr", "video super-resolution", False, False, ("video",), added=SR_ADDED, negative=SR_NEGATIVE),
    Task("vinp", "video inpainting", False, False, ("video", "mask")),
    Task("voutp", "video outpainting", False, False, ("video", "mask")),
    Task("t2i", "text-to-image", True, True, (), size=(1024, 1024)),
    Task("iedit", "image editing", True, False, ("image",), official_tag=False),
    Task("icolor", "image colorization", True, False, ("image",), added=COLOR_ADDED, negative=COLOR_NEGATIVE,
         cfg=7.0, size=(1024, 1024)),
    Task("isr", "image super-resolution", True, False, ("image",), added=SR_ADDED, negative=SR_NEGATIVE,
         size=(1280, 1280)),
    Task("iinp", "image inpainting", True, False, ("image", "mask")),
    Task("ioutp", "image outpainting", True, False, ("image", "mask")),
]}

TASK_LABELS = {f"{t.name} ({t.key}{'' if t.official_tag else ', pack-only'})": t.key for t in TASKS.values()}


def task_from_label(label: str) -> Task:
    key = TASK_LABELS.get(label, label)
    if key not in TASKS:
        raise ValueError(f"unknown MfM task {label!r}; expected one of {', '.join(TASK_LABELS)}")
    return TASKS[key]


def positive_prompt(task: Task, prompt: str, fps: int = DEFAULT_FPS) -> str:
    """``<prompt> <addition> #task: <name>`` exactly as the official script joins it (colour and SR tasks replace
    the ``#FPS: 16.`` tag with their own addition). Lower-casing belongs to the MfM text encoder, not here."""
    return f"{prompt} {task.added.format(fps=fps)} #task: {task.name}"


def negative_prompt(task: Task) -> str:
    """The negative prompt carries no task tag."""
    return task.negative
