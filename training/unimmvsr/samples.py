"""One training sample in pixels, drawn from (seed, step, slot, attempt) (UniMMVSR §3.3, A.2, A.4; Table 3).

HR: ``frames`` consecutive frames of a clip, scaled to cover the stage's size and randomly cropped. LR: the HR
window downsampled to the base model's size and degraded by SDEdit with the T2V base model (k steps, k uniform
in [K1, K2], when a degrader is given and with the configured probability), then by the synthetic degradations
(which do the downsampling themselves when SDEdit did not), and upsampled back bilinearly as the Upsampler node
does. References by task: MI2V — 1…max ID images (the
manifest's, or frames of the clip outside the target window at the target's crop, as the paper extracts them),
cut to a subject box and augmented as in Table 3; editing — a reference video pixel-aligned with the target (the
manifest's at the target's crop and window, or another segment of the clip) with a small start shift.
References are padded in pixel space to the HR size as the References node pads them. Frames are read through
clips.ClipReader (only the frames a sample needs). Bad items raise
``SampleError`` naming the item; the trainer skips, counts and reports them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ...core.unimmvsr.references import pad_to, usable_video_frames
from ...core.unimmvsr.upsampling import upscale_frames
from .clips import ClipError, ClipReader
from .curriculum import draw_task, sample_rng, step_task_rng
from .manifest import Item, items_for


class SampleError(ValueError):
    pass


@dataclass
class Draw:
    """The choices of one slot of one step: what to show (item, task, a content seed) and how to noise it."""
    item: Item
    task: str
    stage_index: int
    prompt: str                       # "" when the text was dropped (the null prompt)
    aug_t: float
    sigma: float
    noise_seed: int
    content_seed: int                 # crop, degradation and references come from this seed
    cache_key: tuple | None = None    # set when the draw's content is cacheable (a fixed variant of the clip)


@dataclass
class PixelSample:
    item: Item
    task: str
    prompt: str                       # "" when the text was dropped
    hr: torch.Tensor                  # [T, H, W, 3] in [0, 1]
    lr: torch.Tensor                  # [T, H/scale, W/scale, 3] degraded
    lr_up: torch.Tensor               # [T, H, W, 3] bilinear upsample of lr (the Upsampler's pixels)
    id_images: list = field(default_factory=list)     # each [1, H, W, 3], padded
    reference_video: torch.Tensor | None = None       # [T', H, W, 3], padded
    record: dict = field(default_factory=dict)


def load_image(path: str) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise SampleError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).float() / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise SampleError(f"{path}: could not decode ({e})") from None


def crop_box(height: int, width: int, out_w: int, out_h: int, mode: str, rng: np.random.Generator | None,
             rescale: tuple = (), aspect: tuple = ()):
    """(scale, top, left) of a crop of out_w×out_h from frames of width×height: ``native`` keeps the clip's own
    pixels (scaled up only when smaller), ``cover`` scales the whole frame to cover the box; ``rescale`` (lo, hi)
    first scales the clip by a factor drawn in [lo, hi] (multi-scale crops: denser content per crop), never below
    covering the box; ``aspect`` (lo, hi) then stretches it by a ratio r drawn log-uniformly in [lo, hi] (height
    × √r, width ÷ √r; ``scale`` is then the pair (height scale, width scale)). The crop is random when ``rng`` is
    given, else centred."""
    cover = max(out_w / width, out_h / height)
    scale = cover
    if mode == "native":
        scale = max(1.0, cover)
    if rescale and rng is not None:
        scale = max(cover, float(rng.uniform(rescale[0], rescale[1])))
    if aspect and rng is not None:
        root = float(np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1])) / 2))
        scale = (max(out_h / height, scale * root), max(out_w / width, scale / root))
    sy, sx = scale if isinstance(scale, tuple) else (scale, scale)
    nh, nw = max(out_h, round(height * sy)), max(out_w, round(width * sx))
    top = int(rng.integers(0, nh - out_h + 1)) if rng is not None else (nh - out_h) // 2
    left = int(rng.integers(0, nw - out_w + 1)) if rng is not None else (nw - out_w) // 2
    return scale, top, left


def apply_crop(frames: torch.Tensor, box, width: int, height: int) -> torch.Tensor:
    """[T, h, w, 3] uint8/float → [T, height, width, 3] float in [0, 1] cut by ``crop_box``'s box.

    Equal to scaling the whole frames (area along an axis that shrinks, bicubic along one that grows) and cutting the
    box out; a shrink touches only the source pixels under the box (``_area_window``), so big frames cost what the
    crop costs."""
    scale, top, left = box
    sy, sx = scale if isinstance(scale, tuple) else (scale, scale)
    t, h, w, _ = frames.shape
    nh, nw = max(height, round(h * sy)), max(width, round(w * sx))
    if (nh, nw) == (h, w):
        return _as_float(frames[:, top:top + height, left:left + width]).contiguous()
    if nh < h and nw < w:
        rows, r0 = _area_window(h, nh, top, height)
        cols, c0 = _area_window(w, nw, left, width)
        window = _as_float(frames[:, r0:r0 + rows.shape[1], c0:c0 + cols.shape[1]]).movedim(-1, 1)
        out = torch.einsum("ry,tcyx,sx->tcrs", rows, window, cols)
        return out.clamp(0, 1).movedim(1, -1).contiguous()
    x = _as_float(frames).movedim(-1, 1)
    for size, grow in (((nh, w), nh > h), ((nh, nw), nw > w)):   # one axis at a time: a stretch may shrink one
        if size != tuple(x.shape[-2:]):                           # and enlarge the other
            x = F.interpolate(x, size=size,
                              **({"mode": "bicubic", "align_corners": False} if grow else {"mode": "area"}))
    return x.clamp(0, 1)[:, :, top:top + height, left:left + width].movedim(1, -1).contiguous()


def _as_float(frames: torch.Tensor) -> torch.Tensor:
    return frames.float().div(255.0) if frames.dtype == torch.uint8 else frames.float()


def _area_window(size: int, out_size: int, start: int, count: int) -> tuple[torch.Tensor, int]:
    """Area resampling of ``size`` → ``out_size`` samples (PyTorch's adaptive average pooling: output i averages
    inputs [⌊i·size/out⌋, ⌈(i+1)·size/out⌉)) restricted to outputs [start, start + count): the [count, n] averaging
    matrix over the n inputs those outputs read, and the first of them."""
    i = torch.arange(start, start + count)
    lo, hi = (i * size) // out_size, -((-(i + 1) * size) // out_size)
    first = int(lo[0])
    j = torch.arange(first, int(hi[-1]))
    m = ((j >= lo[:, None]) & (j < hi[:, None])).float() / (hi - lo)[:, None].float()
    return m, first


def downsample(frames: torch.Tensor, scale: int) -> torch.Tensor:
    """[T, H, W, 3] → [T, H/scale, W/scale, 3] by area averaging (the base model's resolution)."""
    if scale == 1:
        return frames
    x = F.interpolate(frames.movedim(-1, 1), scale_factor=1 / scale, mode="area")
    return x.movedim(1, -1).contiguous()


def augmentation_plan(names: tuple, rng: np.random.Generator) -> dict:
    """The augmentations one sample gets (``[data] augmentations``): each named flip/transpose/reversal with
    probability 1/2, a uniformly random channel order for ``channels``. Nothing is drawn when none is named, so
    configs without augmentation keep their exact sample sequence."""
    plan = {}
    for name in names:
        if name == "channels":
            plan[name] = [int(c) for c in rng.permutation(3)]
        else:
            plan[name] = bool(rng.random() < 0.5)
    return plan


def augment(frames: torch.Tensor, plan: dict, temporal: bool = True) -> torch.Tensor:
    """Apply a plan to [T, H, W, 3] frames: the dihedral flips/transposition of the crop, the channel order and (for
    the target window, ``temporal``) the reversal of time. The same plan on the target and its references keeps
    them aligned."""
    if plan.get("hflip"):
        frames = frames.flip(2)
    if plan.get("vflip"):
        frames = frames.flip(1)
    if plan.get("transpose"):
        frames = frames.transpose(1, 2)
    if "channels" in plan:
        frames = frames[..., plan["channels"]]
    if temporal and plan.get("reverse"):
        frames = frames.flip(0)
    return frames.contiguous()


def subject_box(height: int, width: int, area: tuple, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a random box covering a fraction of the frame drawn in ``area`` (lo, hi), aspect ratio
    log-uniform in [1/2, 2]: the stand-in for a subject crop when the manifest gives no box (docs/design.md
    §14)."""
    fraction = float(rng.uniform(area[0], area[1]))
    ratio = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    h = min(height, max(1, round(np.sqrt(fraction * height * width * ratio))))
    w = min(width, max(1, round(fraction * height * width / h)))
    y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return x0, y0, x0 + w, y0 + h


def aligned_box(box, size: tuple[int, int], ref_size: tuple[int, int], width: int, height: int):
    """``crop_box``'s box for a reference of another size showing the same scene: scaled per axis so that the
    reference covers the very pixels the target's crop covers."""
    scale, top, left = box
    sy, sx = scale if isinstance(scale, tuple) else (scale, scale)
    (h, w), (rh, rw) = size, ref_size
    nh, nw = max(height, round(h * sy)), max(width, round(w * sx))
    return (nh / rh, nw / rw), top, left


class SampleBuilder:
    """Draws pixel samples for a config; ``sdedit(frames, k, seed)`` degrades LR frames with the base model."""

    def __init__(self, cfg, items: list[Item], sdedit=None, clips: ClipReader | None = None):
        self.cfg = cfg
        self.items = items
        self.sdedit = sdedit
        self.clips = clips or ClipReader(cfg.data.whole_clip_mb)
        self.by_task = {t: items_for(items, t) for t in ("t2v", "mi2v", "editing")}
        self.noted: set = set()

    def draw(self, stage_index: int, stage, step: int, slot: int, attempt: int = 0) -> Draw:
        """The choices of a slot. With a cache, the content is one of ``cache_variants`` fixed draws per clip and
        stage (so it can be reused); σ, noise, t_aug and text dropout are drawn afresh every step. The task is the
        slot's own draw, or the step's (``one_task_per_step``: the same for every slot and redraw of the step)."""
        cfg = self.cfg
        rng = sample_rng(cfg.training.seed, step, slot, attempt)
        task = draw_task(stage, step_task_rng(cfg.training.seed, step) if cfg.training.one_task_per_step else rng)
        pool = self.by_task.get(task) or []
        if not pool:
            raise SampleError(f"no clip of the manifest serves task {task}")
        item = pool[int(rng.integers(len(pool)))]
        content_seed = int(rng.integers(2**62))
        key = None
        if cfg.data.latent_cache_gb > 0:
            variant = int(rng.integers(cfg.data.cache_variants))
            content_seed = int(np.random.default_rng([cfg.training.seed, item.line, stage_index,
                                                      ("t2v", "mi2v", "editing").index(task), variant]).integers(2**62))
            key = (item.video, item.line, stage_index, stage.frames, stage.width, stage.height, task, variant)
        prompt = "" if rng.random() < cfg.training.text_dropout else item.prompt
        lo, hi = cfg.training.aug_t_range
        aug_t = float(rng.uniform(lo, hi))
        u, shift = float(rng.random()), cfg.training.sigma_shift
        sigma = shift * u / (1 + (shift - 1) * u)
        if cfg.training.sigma_values:
            sigma = float(cfg.training.sigma_values[int(rng.integers(len(cfg.training.sigma_values)))])
        return Draw(item, task, stage_index, prompt, aug_t, sigma, int(rng.integers(2**31)), content_seed, key)

    def pixels(self, draw: Draw, stage) -> PixelSample:
        try:
            return self._build(draw.item, draw.task, stage, np.random.default_rng(draw.content_seed))
        except SampleError as e:
            raise SampleError(f"{draw.item.label}: {e}") from None

    def build_validation(self, item: Item, stage, task: str, seed: int) -> PixelSample:
        """A deterministic sample of a held-out clip: centred crop, first frames, fixed degradation seed."""
        try:
            return self._build(item, task, stage, np.random.default_rng(seed), centred=True)
        except SampleError as e:
            raise SampleError(f"{item.label}: {e}") from None

    def _outside(self, length: int, start: int, n: int, span: int) -> list[int]:
        """Starts of ``span``-frame segments of the clip that do not overlap the target window [start, start + n),
        within ``[data] reference_gap`` frames of it when set (all of them when none is that near)."""
        gaps = {s: (start - (s + span - 1)) if s + span <= start else s - (start + n - 1)
                for s in range(0, length - span + 1) if s + span <= start or s >= start + n}
        lo, hi = self.cfg.data.reference_gap or (1, length)
        near = [s for s, gap in gaps.items() if lo <= gap <= hi]
        return near or list(gaps)

    def _note(self, key, message: str, *args) -> None:
        """A log line once per (reason, stage): why some samples are built another way."""
        if key not in self.noted:
            self.noted.add(key)
            import logging
            logging.getLogger("UniCascade.train").info(message, *args)

    def _build(self, item: Item, task: str, stage, rng: np.random.Generator, centred: bool = False) -> PixelSample:
        try:
            return self._build_sample(item, task, stage, rng, centred)
        except ClipError as e:
            raise SampleError(str(e)) from None

    def _build_sample(self, item: Item, task: str, stage, rng: np.random.Generator, centred: bool) -> PixelSample:
        from .degradation import degrade

        cfg, scale = self.cfg, self.cfg.data.scale
        clip = self.clips(item.video)
        n = stage.frames
        if clip.frames < n:
            raise SampleError(f"too short: {clip.frames} frames, the stage needs {n}")
        start = 0 if centred else int(rng.integers(0, clip.frames - n + 1))
        box = crop_box(*clip.size, stage.width, stage.height, cfg.data.crop, None if centred else rng,
                       cfg.data.crop_rescale, cfg.data.crop_aspect)
        hr = apply_crop(clip.read(start, n), box, stage.width, stage.height)
        record = {"start": start, "box": box}
        plan = augmentation_plan(cfg.data.augmentations, rng) if cfg.data.augmentations and not centred else {}
        if plan:
            hr = augment(hr, plan)
            record["augmentation"] = [k if k != "channels" else f"channels{v}" for k, v in plan.items() if v]
        deg = cfg.degradation
        lr, factor = hr, scale          # what is left to downsample by the synthetic resize
        if self.sdedit is not None and rng.random() < deg.sdedit_probability:
            k = int(rng.integers(deg.sdedit_k[0], deg.sdedit_k[1] + 1))
            lr = self.sdedit(downsample(hr, scale), k, int(rng.integers(2**31)), item.prompt)
            factor = 1
            record["sdedit_k"] = k
        if deg.synthetic:           # blur → resize → noise → JPEG → video codec (degradation.py)
            lr, ops = degrade(lr, factor, int(rng.integers(2**31)), deg.ranges)
            record["synthetic"] = ops
        else:
            lr = downsample(lr, factor)
        lr_up = upscale_frames(lr, stage.width, stage.height)
        sample = PixelSample(item, task, item.prompt, hr, lr, lr_up, record=record)
        if task == "mi2v":
            sample.id_images = self._id_images(item, clip, start, n, box, plan, stage, rng, record)
        elif task == "editing":
            sample.reference_video = self._reference_video(item, clip, start, n, box, plan, stage, rng, record)
        return sample

    def _id_images(self, item, clip, start, n, box, plan, stage, rng, record) -> list[torch.Tensor]:
        """1…max ID images (§3.3), as inference gets them (docs/design.md §14): a subject crop — the
        manifest's ``id_boxes``, else a random box of ``[data] id_crop`` of the frame — augmented as Table 3
        says, then scaled to fit and grey-padded to the HR size by the References node's own ``pad_to``."""
        from .reference_augmentation import augment_reference

        cfg = self.cfg
        count = int(rng.integers(1, cfg.data.max_id_images + 1))
        if item.id_images:
            picks = [int(i) for i in rng.choice(len(item.id_images), size=count)]
            images = [load_image(item.id_images[i]) for i in picks]
            boxes = [item.id_boxes[i] if item.id_boxes else None for i in picks]
        else:
            outside = self._outside(clip.frames, start, n, 1)
            if not outside:
                raise SampleError("no frame outside the target window to take an ID image from")
            picks = [int(outside[int(rng.integers(len(outside)))]) for _ in range(count)]
            record["id_frames"] = picks
            images = [augment(apply_crop(clip.read(i, 1), box, stage.width, stage.height), plan, temporal=False)[0]
                      for i in picks]
            boxes = [None] * count
        out, record["id_boxes"] = [], []
        for image, given in zip(images, boxes):
            h, w = image.shape[:2]
            if given is None and cfg.data.id_crop:
                given = subject_box(h, w, cfg.data.id_crop, rng)
            if given is not None:
                x0, y0, x1, y1 = (int(v) for v in given)
                x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
                if x1 <= x0 or y1 <= y0:
                    raise SampleError(f"ID box {list(given)} is empty inside a {w}×{h} image")
                image = image[y0:y1, x0:x1]
                record["id_boxes"].append([x0, y0, x1, y1])
            seed = int(rng.integers(2**31))
            if cfg.data.reference_augmentation:
                image = augment_reference(image.movedim(-1, 0).clamp(0, 1), seed)[0].movedim(0, -1)
            out.append(pad_to(image[None], stage.width, stage.height))
        return out

    def _reference_video(self, item, clip, start, n, box, plan, stage, rng, record) -> torch.Tensor:
        """The editing task's reference video (§3.3): pixel-aligned with the target — the same crop of the same
        window — with its start shifted by up to ``[data] reference_shift`` frames (§3.4 "random shift of the
        start frame"). The manifest's ``reference_video`` (an edit's source, same scene) is read at the target's
        box; without one, another segment of the clip (``_outside``) is used, or — when the clip is shorter than
        two windows — the target's own window, shifted."""
        from .reference_augmentation import shift_reference_video_start

        cfg = self.cfg
        shift = cfg.data.reference_shift
        if item.reference_video:
            ref = self.clips(item.reference_video)
            ref_box = box if ref.size == clip.size else aligned_box(box, clip.size, ref.size, stage.width,
                                                                    stage.height)
            want = usable_video_frames(min(n, ref.frames))
            lo, hi = max(0, start - shift), min(ref.frames - want, start + shift)
            if hi < lo:
                raise SampleError(f"reference video {os.path.basename(item.reference_video)} has {ref.frames} frames, "
                                  f"the target window starts at {start}")
            s = int(rng.integers(lo, hi + 1))
        else:
            ref, ref_box, want = clip, box, usable_video_frames(n)
            starts = self._outside(clip.frames, start, n, n)
            if starts:   # a random one (the draw the demo's recipe was made with)
                s = starts[shift_reference_video_start(len(starts), 1, int(rng.integers(2**31)))]
            else:
                self._note(("shifted", stage.name), "editing samples of stage %s: clips shorter than two %d-frame "
                           "windows take the target window shifted by 1…%d frames as their reference video",
                           stage.name, n, max(1, shift))
                moves = [d for d in range(-max(1, shift), max(1, shift) + 1) if d and 0 <= start + d <= clip.frames - n]
                if not moves:
                    raise SampleError(f"too short for a shifted reference video: {clip.frames} frames")
                s = start + moves[int(rng.integers(len(moves)))]
        record["reference_start"] = s
        frames = augment(apply_crop(ref.read(s, want), ref_box, stage.width, stage.height), plan)
        return pad_to(frames, stage.width, stage.height)
