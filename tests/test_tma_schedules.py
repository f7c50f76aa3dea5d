"""α_txt(u), α_img(u) (UniVid eq. 3, 5) and the ablation schedules against closed forms written out here."""
import math

import pytest

from core.attention.schedules import SCHEDULES, alpha_img, alpha_txt, taca_gamma

pytestmark = pytest.mark.host_independent   # never reaches ComfyUI's code: `make test-floor` leaves it out

U = [0.0, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.41, 0.5, 0.6, 0.61, 0.7, 0.8, 0.9, 0.95, 1.0]


def expected_txt(u, lam, schedule, end=0.4):
    if schedule == "off":
        return 1.0
    if schedule == "constant":
        return 1.0 + lam
    if u > end:
        return 1.0
    return {"cosine": 1 + lam / 2 * (1 + math.cos(math.pi * u / end)),
            "linear": 1 + lam - lam * u / end,
            "step": 1 + lam}[schedule]


def expected_img(u, lam, schedule, start=0.6):
    if schedule == "off":
        return 1.0
    if schedule == "constant":
        return 1.0 + lam
    if u <= start:
        return 1.0
    return {"cosine": 1 + lam / 2 * (1 - math.cos(math.pi * (u - start) / (1 - start))),
            "linear": 1 + lam * (u - start) / (1 - start),
            "step": 1 + lam}[schedule]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("lam", [0.3, 0.7])
def test_alpha_txt_closed_form(schedule, lam):
    for u in U:
        assert alpha_txt(u, lam, schedule) == pytest.approx(expected_txt(u, lam, schedule), abs=1e-12), u


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("lam", [0.3, 0.7])
def test_alpha_img_closed_form(schedule, lam):
    for u in U:
        assert alpha_img(u, lam, schedule) == pytest.approx(expected_img(u, lam, schedule), abs=1e-12), u


def test_paper_values():
    # "transitions from α_txt = 1.3 to 1.0 over the first 40% of denoising steps" (UniVid §3, λ = 0.3)
    assert alpha_txt(0.0) == pytest.approx(1.3)
    assert alpha_txt(0.2) == pytest.approx(1.15)
    assert alpha_txt(0.4) == pytest.approx(1.0)
    assert alpha_txt(0.7) == 1.0
    assert alpha_img(0.5) == 1.0 and alpha_img(0.6) == 1.0
    assert alpha_img(0.8) == pytest.approx(1.15)
    assert alpha_img(1.0) == pytest.approx(1.3)


def test_custom_windows_and_zero_lambda():
    assert alpha_txt(0.25, 0.5, "cosine", end=0.5) == pytest.approx(1.25)
    assert alpha_img(0.9, 0.5, "cosine", start=0.8) == pytest.approx(1.25)
    for s in SCHEDULES:
        assert alpha_txt(0.1, 0.0, s) == 1.0 and alpha_img(0.9, 0.0, s) == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="schedule"):
        alpha_txt(0.1, 0.3, "exponential")
    with pytest.raises(ValueError, match="λ"):
        alpha_img(0.9, -0.1)


def test_taca_gamma_first_steps_only():
    # 30 steps, u = i/30: the first 3 steps are boosted (TACA: γ = 1.2 for 3 of 30 steps)
    assert [taca_gamma(i / 30) for i in range(5)] == [1.2, 1.2, 1.2, 1.0, 1.0]
    with pytest.raises(ValueError):
        taca_gamma(0, 0.0)
