"""Reference augmentation (UniMMVSR §3.4 "reference augmentation", A.2, Table 3; docs/design.md §6).

ID images are extracted from the training clip itself, so without augmentation the model would learn to copy
them; Table 3 transforms them to mimic the cross-pair test scenario. Per image, in the table's order:

    brightness ×U[0.9, 1.1] (p 1) → horizontal flip (p 0.5) → shear x U[−0.05, 0.05]·w px and
    y U[−0.05, 0.05]·h px (p 1) → rotation U[−20°, 20°] (p 1) → random crop, area scale U[0.67, 1] (p 0.5)

No blur and no downscale (A.2: the model must take the references' high frequencies). Reference videos of the
editing task instead get a random start frame (``shift_reference_video_start``).

Semantics decided here (Table 3 leaves them open):
- Brightness is MULTIPLICATIVE (``image × factor``, clamped to [0, 1]). kornia's ``RandomBrightness`` is
  additive (``image + factor − 1``), so we use ``kornia.augmentation.ColorJitter`` with only its brightness step,
  which is torchvision's multiplicative formula (``kornia.enhance.adjust_brightness_accumulative``).
- A shear of s px along x moves the image's top edge by +s px along x relative to the centre row (the bottom
  edge by −s), i.e. x' = x − (s / (h/2))·(y − c_y); a shear of s px along y moves the left edge down by s px
  relative to the centre column (the right edge up), y' = y − (s / (w/2))·(x − c_x). s is drawn uniformly in px
  as the table says; kornia's shear parameter is the angle atan(s / (h/2)) (resp. atan(s / (w/2))) in degrees.
  Shear then rotation are one warp (kornia ``RandomAffine``: x-shear, y-shear, then rotation about the centre;
  positive angles turn clockwise as displayed), bicubic, zero padding outside the image.
- The crop scale is the crop's AREA fraction (torchvision / kornia ``RandomResizedCrop`` convention) with the
  image's own aspect ratio; the crop is placed uniformly and resized back to h × w (bicubic).

Parameters are drawn with ``numpy.random.default_rng(seed)`` (``sample_reference_augmentation_params``) and
handed to the kornia modules explicitly, so results depend only on the seed (not on torch's global generator or
the device) and every drawn value is recorded.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# Table 3 (UniMMVSR A.2)
BRIGHTNESS_RANGE = (0.9, 1.1)
FLIP_PROBABILITY = 0.5
SHEAR_FRACTION = 0.05  # x: ±0.05·w px, y: ±0.05·h px
ROTATION_DEGREES = 20.0
CROP_PROBABILITY = 0.5
CROP_SCALE_RANGE = (0.67, 1.0)
RANGE_TOLERANCE = 1e-4  # float rounding of an upstream resize may leave values this far outside [0, 1]


def sample_reference_augmentation_params(n_images: int, height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    """Table 3 draws for ``n_images`` images of ``height × width``: arrays with one entry per image.

    Keys: ``brightness_factor``; ``flipped``; ``shear_x_px``, ``shear_y_px`` and kornia's angles ``shear_x_deg``,
    ``shear_y_deg``; ``rotation_deg``; ``cropped``; ``crop_scale`` (the drawn area fraction, 1.0 when not
    cropped) and ``crop_box`` ``[x0, y0, w, h]`` in pixels (the whole image when not cropped).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if n_images < 1 or height < 2 or width < 2:
        raise ValueError(f"need at least one image of at least 2×2 pixels, got {n_images} of {height}×{width}")
    rng = np.random.default_rng(seed)
    n = int(n_images)

    brightness = rng.uniform(*BRIGHTNESS_RANGE, n)
    flipped = rng.random(n) < FLIP_PROBABILITY
    shear_x_px = rng.uniform(-SHEAR_FRACTION * width, SHEAR_FRACTION * width, n)
    shear_y_px = rng.uniform(-SHEAR_FRACTION * height, SHEAR_FRACTION * height, n)
    rotation = rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES, n)
    cropped = rng.random(n) < CROP_PROBABILITY
    scale = rng.uniform(*CROP_SCALE_RANGE, n)
    place_x, place_y = rng.random(n), rng.random(n)

    side = np.sqrt(scale)
    crop_h = np.clip(np.rint(height * side), 1, height).astype(np.int64)
    crop_w = np.clip(np.rint(width * side), 1, width).astype(np.int64)
    x0 = np.minimum(np.floor(place_x * (width - crop_w + 1)), width - crop_w).astype(np.int64)
    y0 = np.minimum(np.floor(place_y * (height - crop_h + 1)), height - crop_h).astype(np.int64)
    whole = np.array([0, 0, width, height], dtype=np.int64)
    crop_box = np.where(cropped[:, None], np.stack([x0, y0, crop_w, crop_h], axis=1), whole)

    return {
        "brightness_factor": brightness,
        "flipped": flipped,
        "shear_x_px": shear_x_px,
        "shear_y_px": shear_y_px,
        "shear_x_deg": np.degrees(np.arctan(shear_x_px / (height / 2))),
        "shear_y_deg": np.degrees(np.arctan(shear_y_px / (width / 2))),
        "rotation_deg": rotation,
        "cropped": cropped,
        "crop_scale": np.where(cropped, scale, 1.0),
        "crop_box": crop_box,
    }


def apply_reference_augmentation(images: torch.Tensor, params: dict[str, np.ndarray]) -> torch.Tensor:
    """Apply Table 3 with given parameters (``sample_reference_augmentation_params``) to ``[N, 3, H, W]`` in [0, 1]."""
    import kornia.augmentation as K

    _check_images(images, batched=True)
    n, _, height, width = images.shape
    if len(params["brightness_factor"]) != n:
        raise ValueError(f"parameters for {len(params['brightness_factor'])} images, got {n} images")
    f32 = dict(dtype=torch.float32)
    everywhere = torch.ones(n, dtype=torch.bool)
    x = images.float().clamp(0, 1)

    brightness = K.ColorJitter(brightness=BRIGHTNESS_RANGE, p=1.0)
    x = brightness(x, params={
        "brightness_factor": torch.as_tensor(params["brightness_factor"], **f32),
        "contrast_factor": torch.ones(n), "saturation_factor": torch.ones(n), "hue_factor": torch.zeros(n),
        "order": torch.arange(4), "batch_prob": everywhere})

    flip = K.RandomHorizontalFlip(p=FLIP_PROBABILITY)
    x = flip(x, params={"batch_prob": torch.as_tensor(params["flipped"], dtype=torch.bool)})

    max_shear_x = math.degrees(math.atan(SHEAR_FRACTION * width / (height / 2)))
    max_shear_y = math.degrees(math.atan(SHEAR_FRACTION * height / (width / 2)))
    affine = K.RandomAffine(degrees=ROTATION_DEGREES, shear=(-max_shear_x, max_shear_x, -max_shear_y, max_shear_y),
                            resample="bicubic", padding_mode="zeros", align_corners=False, p=1.0)
    centre = torch.tensor([[(width - 1) / 2, (height - 1) / 2]], **f32).expand(n, 2)
    x = affine(x, params={
        "translations": torch.zeros(n, 2), "center": centre, "scale": torch.ones(n, 2),
        "angle": torch.as_tensor(params["rotation_deg"], **f32),
        "shear_x": torch.as_tensor(params["shear_x_deg"], **f32),
        "shear_y": torch.as_tensor(params["shear_y_deg"], **f32), "batch_prob": everywhere}).clamp(0, 1)

    box = torch.as_tensor(params["crop_box"], **f32)
    bx, by, bw, bh = box.unbind(1)
    src = torch.stack([torch.stack([bx, by], 1), torch.stack([bx + bw - 1, by], 1),
                       torch.stack([bx + bw - 1, by + bh - 1], 1), torch.stack([bx, by + bh - 1], 1)], dim=1)
    dst = torch.tensor([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], **f32).expand(n, 4, 2)
    crop = K.RandomResizedCrop((height, width), scale=CROP_SCALE_RANGE, ratio=(width / height, width / height),
                               resample="bicubic", align_corners=False, p=CROP_PROBABILITY)
    size = torch.tensor([[height, width]]).expand(n, 2)
    x = crop(x, params={"src": src, "dst": dst, "input_size": size, "output_size": size,
                        "batch_prob": torch.as_tensor(params["cropped"], dtype=torch.bool)})
    return x.clamp(0, 1).to(images.dtype)


def augment_reference(image: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
    """Table 3 reference augmentation of ``[3, H, W]`` or ``[N, 3, H, W]`` float in [0, 1], deterministic per seed.

    Returns the augmented tensor (same shape, dtype and device) and the drawn parameters
    (``sample_reference_augmentation_params``' keys) as Python values for one image, or as lists with one value
    per image for a batch; each image of a batch gets its own draws.
    """
    batched = _check_images(image, batched=None)
    images = image if batched else image[None]
    params = sample_reference_augmentation_params(images.shape[0], images.shape[2], images.shape[3], seed)
    out = apply_reference_augmentation(images, params)
    record = {key: value.tolist() for key, value in params.items()}
    if not batched:
        out, record = out[0], {key: value[0] for key, value in record.items()}
    return out, record


def shift_reference_video_start(n_frames_available: int, n_frames_needed: int, seed: int) -> int:
    """Random start frame of a reference video (UniMMVSR §3.4): uniform in [0, available − needed].

    Deterministic per seed. With as many frames as needed the start is always 0, so callers should load a
    longer reference than they use to get a shift.
    """
    for name, value in (("n_frames_available", n_frames_available), ("n_frames_needed", n_frames_needed),
                        ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if n_frames_needed < 1:
        raise ValueError("n_frames_needed must be at least 1")
    if n_frames_needed > n_frames_available:
        raise ValueError(f"the reference video is too short: {n_frames_available} frames available, "
                         f"{n_frames_needed} needed")
    return int(np.random.default_rng(seed).integers(0, n_frames_available - n_frames_needed + 1))


def _check_images(images, batched: bool | None) -> bool:
    """Validate ``[3, H, W]`` / ``[N, 3, H, W]`` float in [0, 1]; returns whether the input is batched."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"the reference image must be a torch.Tensor, got {type(images).__name__}")
    expected = "[N, 3, H, W]" if batched else "[3, H, W] or [N, 3, H, W]"
    is_batched = images.dim() == 4
    if images.dim() not in ((4,) if batched else (3, 4)) or images.shape[-3] != 3:
        raise ValueError(f"the reference image must be {expected} (channels first), got {tuple(images.shape)}")
    if images.shape[-1] < 2 or images.shape[-2] < 2 or (is_batched and images.shape[0] == 0):
        raise ValueError(f"the reference image is too small: {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"the reference image must be float in [0, 1], got dtype {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("the reference image contains NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(f"the reference image must hold values in [0, 1], got [{low:.4g}, {high:.4g}]")
    return is_batched
