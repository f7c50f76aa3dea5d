"""Classic synthetic degradations of the LR video, applied after SDEdit (UniMMVSR §3.3, A.4, Fig. 9; docs/design.md §6).

The paper's pipeline is SDEdit degradation with the T2V base model, then "traditional synthetic degradation to
introduce high-frequency degradation pattern" (A.4): blur, noise, resize and compression (§3.3). The paper
gives no parameters for this second stage; ours are a single, lighter pass of the Real-ESRGAN / RealBasicVSR
recipe (see ``SyntheticDegradation``), in RealBasicVSR's order:

    Gaussian blur → resize to the LR size → Gaussian noise → JPEG → video codec (H.264 or MPEG-4 Part 2)

Parameters are drawn once per clip from ``numpy.random.default_rng(seed)`` (``sample_degradation_params``), so
every frame of a clip gets the same blur, interpolation, noise level and codec setting; the noise itself is
independent per frame (drawn from its own recorded seed). ``degrade`` runs on the CPU with OpenCV and PyAV.

OpenCV (``cv2``) and PyAV (``av``) are imported inside the functions that use them: this package is
never imported by the ComfyUI nodes, and must not slow any start-up that does import it.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch

OPERATIONS = ("blur", "resize", "noise", "jpeg", "video")  # the order they are applied in
INTERPOLATIONS = ("area", "bilinear", "bicubic")
VIDEO_CODECS = ("libx264", "mpeg4")
RANGE_TOLERANCE = 1e-4  # float rounding of an upstream resize may leave values this far outside [0, 1]


@dataclass(frozen=True)
class SyntheticDegradation:
    """Probabilities and uniform sampling ranges of the synthetic degradations (UniMMVSR §3.3, A.4).

    The paper names the ops (blur, noise, resize, compression) but gives no values. Sources: Real-ESRGAN (Wang et al.,
    ICCVW 2021) second-order pipeline and its RealBasicVSR (Chan et al., CVPR 2022) video version: blur σ ∈ [0.2, 3]
    (first order) / [0.2, 1.5] with p 0.8 (second order); resize with area / bilinear / bicubic, 1/3 each; Gaussian
    noise σ ∈ [1, 30]/255, gray noise with p 0.4; JPEG quality ∈ [30, 95]; video compression with libx264 / h264 / mpeg4
    (RealBasicVSR). UniMMVSR's LR input already went through SDEdit with the base model (§3.3, A.4), so one lighter pass
    is enough: the second-order blur range, a third of the noise, JPEG and codecs no worse than ordinary web video, and
    each optional op with p 0.5.

    - ``blur_probability`` 0.5, ``blur_sigma_range`` (0.2, 1.5) px: isotropic Gaussian (cv2.GaussianBlur), kernel
      size 2·⌈3σ⌉ + 1, reflect-101 borders.
    - resize to H/scale × W/scale is always applied; ``resize_interpolations``: drawn uniformly among them
      (OpenCV INTER_AREA / INTER_LINEAR / INTER_CUBIC).
    - ``noise_probability`` 0.5, ``noise_std_range`` (1/255, 10/255) on the [0, 1] scale; ``noise_gray_probability``
      0.4: one noise field for the three channels (luma-only noise), else independent per channel.
    - ``jpeg_probability`` 0.5, ``jpeg_quality_range`` (50, 95) inclusive (cv2.imencode, every frame the same).
    - ``video_probability`` 0.5, ``video_codecs`` libx264 / mpeg4 drawn uniformly; ``x264_crf_range`` (18, 28)
      (18 ≈ visually lossless … 28 ≈ streaming quality), ``x264_preset`` "medium" (x264's default);
      ``mpeg4_qscale_range`` (2, 10) fixed quantiser (ffmpeg's -q:v; 2 best, 31 worst); ``video_fps`` 16 (Wan's
      frame rate; it only sets the container's time base and x264's rate control).
    """

    blur_probability: float = 0.5
    blur_sigma_range: tuple[float, float] = (0.2, 1.5)
    resize_interpolations: tuple[str, ...] = INTERPOLATIONS
    noise_probability: float = 0.5
    noise_std_range: tuple[float, float] = (1 / 255, 10 / 255)
    noise_gray_probability: float = 0.4
    jpeg_probability: float = 0.5
    jpeg_quality_range: tuple[int, int] = (50, 95)
    video_probability: float = 0.5
    video_codecs: tuple[str, ...] = VIDEO_CODECS
    x264_crf_range: tuple[int, int] = (18, 28)
    x264_preset: str = "medium"
    mpeg4_qscale_range: tuple[int, int] = (2, 10)
    video_fps: int = 16

    def __post_init__(self):
        for name in ("blur_probability", "noise_probability", "noise_gray_probability", "jpeg_probability",
                     "video_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SyntheticDegradation.{name} = {value} is not a probability in [0, 1]")
        _check_range("blur_sigma_range", self.blur_sigma_range, 1e-6, 50.0)
        _check_range("noise_std_range", self.noise_std_range, 0.0, 1.0)
        _check_range("jpeg_quality_range", self.jpeg_quality_range, 1, 100, integer=True)
        _check_range("x264_crf_range", self.x264_crf_range, 0, 51, integer=True)
        _check_range("mpeg4_qscale_range", self.mpeg4_qscale_range, 1, 31, integer=True)
        _check_choices("resize_interpolations", self.resize_interpolations, INTERPOLATIONS)
        _check_choices("video_codecs", self.video_codecs, VIDEO_CODECS)
        if int(self.video_fps) != self.video_fps or self.video_fps < 1:
            raise ValueError(f"SyntheticDegradation.video_fps = {self.video_fps} must be a positive integer")


def _check_range(name, bounds, low, high, integer=False):
    if len(bounds) != 2 or not low <= bounds[0] <= bounds[1] <= high:
        raise ValueError(f"SyntheticDegradation.{name} = {bounds} must be (lo, hi) with {low} ≤ lo ≤ hi ≤ {high}")
    if integer and any(int(b) != b for b in bounds):
        raise ValueError(f"SyntheticDegradation.{name} = {bounds} must hold integers")


def _check_choices(name, values, allowed):
    if not values or any(v not in allowed for v in values):
        raise ValueError(f"SyntheticDegradation.{name} = {values} must be a non-empty subset of {allowed}")


def blur_kernel_size(sigma: float) -> int:
    """Odd Gaussian kernel size covering ±3σ: 2·⌈3σ⌉ + 1."""
    return 2 * math.ceil(3 * sigma) + 1


# ---------------------------------------------------------------------------------------------------------------
# Parameter draws


def sample_degradation_params(seed: int, config: SyntheticDegradation = SyntheticDegradation()) -> dict:
    """The degradation of one clip for a seed: ``{op: {"applied": bool, **parameters}}`` for every op in OPERATIONS.

    Parameters are listed only for applied ops. Every call makes the same fixed sequence of draws from
    ``numpy.random.default_rng(seed)`` whatever is applied, so a probability change never shifts other draws.
    """
    _check_seed(seed)
    rng = np.random.default_rng(seed)
    c = config

    blur_on = rng.random() < c.blur_probability
    sigma = float(rng.uniform(*c.blur_sigma_range))
    interpolation = c.resize_interpolations[int(rng.integers(len(c.resize_interpolations)))]
    noise_on = rng.random() < c.noise_probability
    noise_std = float(rng.uniform(*c.noise_std_range))
    noise_gray = bool(rng.random() < c.noise_gray_probability)
    noise_seed = int(rng.integers(2**63 - 1))
    jpeg_on = rng.random() < c.jpeg_probability
    quality = int(rng.integers(c.jpeg_quality_range[0], c.jpeg_quality_range[1] + 1))
    video_on = rng.random() < c.video_probability
    codec = c.video_codecs[int(rng.integers(len(c.video_codecs)))]
    crf = int(rng.integers(c.x264_crf_range[0], c.x264_crf_range[1] + 1))
    qscale = int(rng.integers(c.mpeg4_qscale_range[0], c.mpeg4_qscale_range[1] + 1))

    params = {
        "blur": {"applied": True, "sigma": sigma, "kernel_size": blur_kernel_size(sigma)} if blur_on else {},
        "resize": {"applied": True, "interpolation": interpolation},
        "noise": {"applied": True, "std": noise_std, "gray": noise_gray, "seed": noise_seed} if noise_on else {},
        "jpeg": {"applied": True, "quality": quality} if jpeg_on else {},
        "video": {},
    }
    if video_on:
        params["video"] = ({"applied": True, "codec": codec, "crf": crf, "preset": c.x264_preset}
                           if codec == "libx264" else {"applied": True, "codec": codec, "qscale": qscale})
    for op in OPERATIONS:
        params[op].setdefault("applied", False)
    return params


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


# ---------------------------------------------------------------------------------------------------------------
# Input checks


def _check_values(frames: torch.Tensor, what: str) -> None:
    if not frames.is_floating_point():
        raise ValueError(f"{what} must be a float tensor in [0, 1], got dtype {frames.dtype}")
    if frames.numel() == 0:
        raise ValueError(f"{what} is empty: shape {tuple(frames.shape)}")
    if not bool(torch.isfinite(frames).all()):
        raise ValueError(f"{what} contains NaN or infinite values")
    low, high = float(frames.min()), float(frames.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(f"{what} must hold values in [0, 1], got [{low:.4g}, {high:.4g}]")


def _check_scale(scale, height: int, width: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if height % scale or width % scale:
        raise ValueError(f"scale {scale} does not divide the frame size {height}×{width} (H×W)")


def _lr_size(height: int, width: int, scale: int) -> tuple[int, int]:
    return height // scale, width // scale


# ---------------------------------------------------------------------------------------------------------------
# OpenCV / PyAV path


def degrade(frames: torch.Tensor, scale: int, seed: int,
            config: SyntheticDegradation = SyntheticDegradation()) -> tuple[torch.Tensor, dict]:
    """Degrade one clip ``[T, H, W, 3]`` float in [0, 1] to ``[T, H/scale, W/scale, 3]`` float32 in [0, 1].

    ``scale`` 1 keeps the size (the resize op is then the identity, e.g. on SDEdit output already at the LR
    size). The result is on the input's device. The returned dict (JSON-serialisable) is
    ``sample_degradation_params(seed, config)`` plus ``seed``, ``scale``, ``input_size``/``output_size`` (T, H, W)
    and ``applied`` (the applied ops in order); resize also records its output ``size`` (H, W).
    """
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be a tensor [T, H, W, 3], got "
                         f"{tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
    _check_values(frames, "frames")
    t, height, width, _ = frames.shape
    _check_scale(scale, height, width)
    params = sample_degradation_params(seed, config)
    lr_h, lr_w = _lr_size(height, width, scale)

    video = frames.detach().to("cpu", torch.float32).clamp(0, 1).numpy().copy()  # [T, H, W, 3] float32
    if params["blur"]["applied"]:
        video = _gaussian_blur_opencv(video, params["blur"]["sigma"], params["blur"]["kernel_size"])
    params["resize"]["size"] = [lr_h, lr_w]
    video = _resize_opencv(video, lr_h, lr_w, params["resize"]["interpolation"])
    if params["noise"]["applied"]:
        noise = params["noise"]
        video = _add_gaussian_noise_numpy(video, noise["std"], noise["gray"], noise["seed"])
    if params["jpeg"]["applied"]:
        video = _jpeg_opencv(video, params["jpeg"]["quality"])
    if params["video"]["applied"]:
        video = video_codec_round_trip(video, params["video"], config.video_fps)

    record = {"seed": int(seed), "scale": int(scale), "input_size": [t, height, width],
              "output_size": [t, lr_h, lr_w], "applied": [op for op in OPERATIONS if params[op]["applied"]], **params}
    return torch.from_numpy(np.ascontiguousarray(video)).to(frames.device), record


def _gaussian_blur_opencv(video: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
    import cv2

    k = (kernel_size, kernel_size)
    return np.stack([cv2.GaussianBlur(f, k, sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
                     for f in video])


def _resize_opencv(video: np.ndarray, height: int, width: int, interpolation: str) -> np.ndarray:
    if video.shape[1:3] == (height, width):
        return video
    import cv2

    flag = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}[interpolation]
    out = np.stack([cv2.resize(f, (width, height), interpolation=flag) for f in video])
    return np.clip(out, 0.0, 1.0)  # bicubic overshoots


def _add_gaussian_noise_numpy(video: np.ndarray, std: float, gray: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t, h, w, c = video.shape
    noise = rng.standard_normal((t, h, w, 1 if gray else c), dtype=np.float32) * np.float32(std)
    return np.clip(video + noise, 0.0, 1.0)


def _to_uint8(video: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(video * 255.0), 0, 255).astype(np.uint8)


def _jpeg_opencv(video: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    out = []
    for frame in _to_uint8(video):
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"OpenCV could not JPEG-encode a {frame.shape} frame at quality {quality}")
        out.append(cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return np.stack(out).astype(np.float32) / 255.0


def video_codec_round_trip(video: np.ndarray, codec_params: dict, fps: int = 16) -> np.ndarray:
    """Encode ``[T, H, W, 3]`` float [0, 1] frames into an in-memory MP4 and decode them back (same T, H, W).

    ``codec_params``: ``{"codec": "libx264", "crf": int, "preset": str}`` or ``{"codec": "mpeg4", "qscale": int}``.
    Frames go through yuv420p (as delivered video does); odd sizes are edge-padded to even for the chroma
    subsampling and cropped back. MPEG-4's fixed quantiser is set as qmin = qmax = qscale (PyAV frames carry no
    per-frame quality, which is what ffmpeg's -q:v sets).
    """
    import av

    t, height, width, _ = video.shape
    frames = _to_uint8(video)
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    codec = codec_params["codec"]
    if codec == "libx264":
        options = {"crf": str(codec_params["crf"]), "preset": str(codec_params.get("preset", "medium"))}
    elif codec == "mpeg4":
        options = {"qmin": str(codec_params["qscale"]), "qmax": str(codec_params["qscale"])}
    else:
        raise ValueError(f"unknown video codec {codec!r}; expected one of {VIDEO_CODECS}")

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=int(fps), options=options)
        stream.codec_context.thread_count = 1   # one bitstream on every machine (threads change how it is cut up)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    buffer.seek(0)
    with av.open(buffer, mode="r") as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if len(decoded) != t:
        raise RuntimeError(f"{codec} round trip returned {len(decoded)} frames for {t}")
    return np.stack(decoded)[:, :height, :width].astype(np.float32) / 255.0
