"""u from σ (global progress) and from a sampler's σ list, against closed-form inverses."""
import pytest

from core.attention.progress import progress_from_schedule, progress_from_sigma

pytestmark = pytest.mark.host_independent   # never reaches ComfyUI's code: `make test-floor` leaves it out


def flow_percent_to_sigma(shift):
    def f(percent):
        if percent <= 0:
            return 1.0
        if percent >= 1:
            return 0.0
        t = 1.0 - percent
        return shift * t / (1 + (shift - 1) * t)
    return f


@pytest.mark.parametrize("shift", [1.0, 3.0, 8.0])
def test_global_progress_inverts_shifted_flow(shift):
    f = flow_percent_to_sigma(shift)
    for sigma in [0.999, 0.95, 0.8, 0.5, 0.2, 0.05]:
        t = sigma / (shift - (shift - 1) * sigma)  # inverse of the shift, by hand
        assert progress_from_sigma(sigma, f) == pytest.approx(1 - t, abs=1e-9)
    assert progress_from_sigma(1.0, f) == 0.0
    assert progress_from_sigma(0.0, f) == 1.0


def test_schedule_progress():
    sigmas = [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [progress_from_schedule(s, sigmas) for s in sigmas[:-1]] == [0.0, 0.25, 0.5, 0.75]
    assert progress_from_schedule(0.625, sigmas) == pytest.approx(0.375)  # halfway through step 1
