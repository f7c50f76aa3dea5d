"""Building MfM's unified condition for any of the 16 tasks (paper §3.1, Fig. 3; docs/design.md §9).

The condition is pixels + depth + mask on one canvas of ``frames × height × width``:
- pixels: RGB in [−1, 1], multiplied by the keep mask (unknown pixels are 0);
- depth: relative inverse depth, only at the known frames of generation tasks (official behaviour), at every
  frame carrying pixels (option), or nowhere;
- mask: 1 = keep/known, 0 = generate (MfM's polarity; ComfyUI's MASK is the opposite).

Which frames are known per task (official script): i2v frame 0; first-last frame 0 and F−1; extension: the
last ``clip_frames`` frames of the input become frames 0…; clip transition: the last ``clip_frames`` of clip A at
the start and the first ``clip_frames`` of clip B at the end; editing, colorization (grayscale condition),
super-resolution (the low-res video resized into the box), inpainting and outpainting (a keep mask): every frame,
the first (len − 1)//4·4 + 1 frames of the input, at most ``frames``. Image tasks have one frame, motion 0.

The same condition is also given in Wan VACE's terms (docs/design.md §9): control pixels known → kept, unknown →
grey 0.5 with control mask 1; for re-rendering tasks (editing, colorization, super-resolution) the whole condition
video is the control signal with mask 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from . import fitting, masks
from .tasks import CLIP_FRAMES, DEFAULT_FPS, DEFAULT_MOTION, Task, negative_prompt, positive_prompt

DEPTH_MODES = ("known frames of generation tasks (official)", "every frame with pixels", "none")
MASK_SOURCES = ("input mask", "random interior (inpainting)", "random border (outpainting)")
RERENDER = {"vedit", "vcolor", "vsr", "iedit", "icolor", "isr"}
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale


@dataclass
class MfMCondition:
    task: Task
    pixels: torch.Tensor            # [F, H, W, 3] in [−1, 1], × keep
    depth: torch.Tensor             # [F, H, W]
    keep: torch.Tensor              # [F, H, W], 1 = known
    canvas: torch.Tensor            # [F, H, W, 3] in [0, 1]: the fitted frames before masking
    known_frames: list[int]
    positive: str
    negative: str
    motion_score: float
    cfg: float
    fps: int
    placement: fitting.Placement | None = None
    extras: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)   # what the user should know (the node logs them)

    @property
    def frames(self) -> int:
        return self.pixels.shape[0]

    def tensor(self) -> torch.Tensor:
        """[1, 5, F, H, W]: R, G, B, depth, mask — the adapter's input."""
        stacked = torch.cat([self.pixels, self.depth.unsqueeze(-1), self.keep.unsqueeze(-1)], dim=-1)
        return stacked.permute(3, 0, 1, 2).unsqueeze(0).contiguous()

    def vace_control(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(control video [F, H, W, 3] in [0, 1], control masks [F, H, W], 1 = generate) for WanVaceToVideo."""
        if self.task.key in RERENDER:
            control = self.canvas * self.keep.unsqueeze(-1) + 0.5 * (1 - self.keep.unsqueeze(-1))
            return control, torch.ones_like(self.keep)
        keep = self.keep.unsqueeze(-1)
        return self.canvas * keep + 0.5 * (1 - keep), 1 - self.keep


def grayscale(frames: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(GRAY_WEIGHTS, dtype=frames.dtype)
    return (frames[..., :3] * w).sum(-1, keepdim=True).expand(*frames.shape[:-1], 3).contiguous()


def _check_frames(name: str, frames: torch.Tensor | None) -> torch.Tensor | None:
    if frames is None:
        return None
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4) or frames.shape[0] < 1:
        raise ValueError(f"{name}: expected IMAGE frames [N, H, W, 3], got shape {tuple(frames.shape)}")
    return frames[..., :3].float().cpu()


def _single(name: str, image: torch.Tensor) -> torch.Tensor:
    if image.shape[0] != 1:
        raise ValueError(f"{name}: expected one image, got a batch of {image.shape[0]} "
                         f"(connect several frames to a video input instead)")
    return image


def video_frame_count(name: str, available: int, frames: int) -> int:
    """Frames a manipulation task uses: the first (len − 1)//4·4 + 1 of the input, at most ``frames``."""
    if available < 5:
        raise ValueError(f"{name}: video tasks need at least 5 frames (4n+1), got {available}")
    return min(frames, (available - 1) // 4 * 4 + 1)


def build_condition(task: Task, prompt: str, width: int, height: int, frames: int, *,
                    image: torch.Tensor | None = None, last_image: torch.Tensor | None = None,
                    video: torch.Tensor | None = None, video_b: torch.Tensor | None = None,
                    keep_mask: torch.Tensor | None = None, mask_source: str = MASK_SOURCES[0], seed: int = 0,
                    fit: str = "pad", swap_portrait: bool = True, depth_mode: str = DEPTH_MODES[0],
                    depth_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    clip_frames: int = CLIP_FRAMES, motion_score: float = DEFAULT_MOTION,
                    fps: int = DEFAULT_FPS, official_canvas: bool = True) -> MfMCondition:
    """The condition of ``task``; with ``official_canvas`` an image task with an official canvas (t2i and icolor
    1024², isr 1280²) uses it instead of ``width × height``."""
    if official_canvas and task.size is not None:
        width, height = task.size
    if width % 16 or height % 16 or width < 16 or height < 16:
        raise ValueError(f"width/height: {width}×{height} is not a multiple of 16 "
                         f"(try {max(16, round(width / 16) * 16)}×{max(16, round(height / 16) * 16)})")
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"frames: {frames} is not 4n+1 (try {max(1, round((frames - 1) / 4) * 4 + 1)})")
    if mask_source not in MASK_SOURCES:
        raise ValueError(f"mask source {mask_source!r} is not one of {', '.join(MASK_SOURCES)}")
    if depth_mode not in DEPTH_MODES:
        raise ValueError(f"depth mode {depth_mode!r} is not one of {', '.join(DEPTH_MODES)}")
    image, last_image = _check_frames("image", image), _check_frames("last_image", last_image)
    video, video_b = _check_frames("video", video), _check_frames("video_b", video_b)
    given = {"image": image, "last_image": last_image, "video": video, "video_b": video_b, "mask": keep_mask}
    for need in task.needs:
        if need == "mask" and mask_source != MASK_SOURCES[0]:
            continue
        if given[need] is None:
            raise ValueError(f"{need}: the task '{task.name}' needs this input")
    if task.image:
        frames = 1

    # the content: (frames to place, their indices on the canvas)
    placed: list[tuple[torch.Tensor, list[int]]] = []
    key = task.key
    if key in ("i2v", "flf2v"):
        placed.append((_single("image", image), [0]))
        if key == "flf2v":
            if frames < 2:
                raise ValueError("frames: a first-last-frame video needs at least 5 frames")
            placed.append((_single("last_image", last_image), [frames - 1]))
    elif key in ("vext", "flc2v"):
        need = clip_frames * (2 if key == "flc2v" else 1)
        if frames <= need:
            raise ValueError(f"frames: {frames} leaves nothing to generate around {need} known frames")
        for name, clip in (("video", video), ("video_b", video_b))[:2 if key == "flc2v" else 1]:
            if clip.shape[0] < clip_frames:
                raise ValueError(f"{name}: needs at least {clip_frames} frames, got {clip.shape[0]}")
        placed.append((video[-clip_frames:], list(range(clip_frames))))
        if key == "flc2v":
            placed.append((video_b[:clip_frames], list(range(frames - clip_frames, frames))))
    elif key in ("vedit", "vcolor", "vsr", "vinp", "voutp"):
        frames = video_frame_count("video", video.shape[0], frames)
        placed.append((video[:frames], list(range(frames))))
    elif key in ("iedit", "icolor", "isr", "iinp", "ioutp"):
        placed.append((_single("image", image), [0]))

    if placed:
        first = placed[0][0]
        placement = fitting.plan(first.shape[2], first.shape[1], width, height, fit, swap_portrait)
        if key == "icolor":   # the official path stretches the image to the box first, then fits that as usual
            placed[0] = (fitting.resize(first, width, height), [0])
        canvas_w, canvas_h = placement.canvas_width, placement.canvas_height
    else:
        placement, (canvas_w, canvas_h) = None, (width, height)

    canvas = torch.zeros(frames, canvas_h, canvas_w, 3)
    keep = torch.zeros(frames, canvas_h, canvas_w)
    known: list[int] = []
    for content, indices in placed:
        canvas[indices] = fitting.place(content, placement)
        keep[indices] = fitting.place_mask(torch.ones(content.shape[:3]), placement)
        known += indices

    if key in ("vinp", "voutp", "iinp", "ioutp"):
        source = video if key in ("vinp", "voutp") else image
        if mask_source == MASK_SOURCES[0]:
            user = keep_mask.float().cpu()
            if user.ndim == 2:
                user = user.unsqueeze(0)
            if user.shape[1:] != source.shape[1:3]:
                raise ValueError(f"mask: {user.shape[2]}×{user.shape[1]} does not match the "
                                 f"{source.shape[2]}×{source.shape[1]} input")
            if user.shape[0] not in (1, source.shape[0]):
                raise ValueError(f"mask: {user.shape[0]} frames for a {source.shape[0]}-frame input "
                                 f"(give one mask or one per frame)")
            user = user.expand(source.shape[0], -1, -1)
        else:
            make = masks.interior_mask if mask_source == MASK_SOURCES[1] else masks.border_mask
            user = make(source.shape[1], source.shape[2], seed).expand(source.shape[0], -1, -1)
        keep *= fitting.place_mask(user[:frames], placement)

    warnings = []
    if placed and not bool(keep.any()):
        warnings.append(f"the mask keeps nothing of the {'image' if task.image else 'video'} (it marks every pixel "
                        f"to be generated): {task.name} degenerates to "
                        f"{'text-to-image' if task.image else 'text-to-video'} generation")

    fitted = canvas
    if key in ("vcolor", "icolor"):
        canvas = grayscale(canvas)
    pixels = (canvas * 2 - 1) * keep.unsqueeze(-1)

    depth = torch.zeros(frames, canvas_h, canvas_w)
    if depth_mode != DEPTH_MODES[2] and known:
        targets = sorted(set(known)) if (task.generation or depth_mode == DEPTH_MODES[1]) else []
        if targets:
            if depth_fn is None:
                raise ValueError("depth_model: this task uses depth at its known frames; connect a depth model "
                                 "or set depth to 'none'")
            depth[targets] = depth_fn(fitted[targets]).float().cpu()

    return MfMCondition(task=task, pixels=pixels, depth=depth, keep=keep, canvas=canvas,
                        known_frames=sorted(set(known)), positive=positive_prompt(task, prompt, fps),
                        negative=negative_prompt(task), motion_score=0.0 if task.image else float(motion_score),
                        cfg=task.cfg, fps=fps, placement=placement, warnings=warnings,
                        extras={"video": video, "video_b": video_b, "clip_frames": clip_frames,
                                "image_size": None if image is None else tuple(image.shape[1:3])})
