"""MfM's unified condition for all 16 tasks, the fitting rules, mask generators and the light adapter
(docs/design.md §9), against values written out here from the official script's rules."""
import re

import pytest
import torch

from core.mfm import fitting, masks
from core.mfm.adapter import LightAdapter
from core.mfm.condition import DEPTH_MODES, MASK_SOURCES, build_condition
from core.mfm.tasks import TASKS, task_from_label

pytestmark = pytest.mark.host_independent   # never reaches ComfyUI's code: `make test-floor` leaves it out

NEG = ("static, watermark, subtitles, scene change, flickering, distorted, discontinuous, bad anatomy, bad hands, "
       "missing fingers, cropped, ugly, blurry, low resolution, low quality, motionless, cartoon, animation, oil "
       "painting, #reverse, #motion: super-fast, #backplay, human distortion, unnatural movement")
COLOR_NEG = "over-saturated, grayscale, b&w, color bleeding, plain"
SR_NEG = "blurry, dotted, noise, jpeg compression, raster lines, unclear, lowres, over-smoothed"

# key: (#task name, positive addition, negative, image task, generation task)
EXPECTED = {
    "t2v": ("text-to-video", "#FPS: 16.", NEG, False, True),
    "i2v": ("image-to-video", "#FPS: 16.", NEG, False, True),
    "vext": ("video extending", "#FPS: 16.", NEG, False, True),
    "flf2v": ("image-to-image transition", "#FPS: 16.", NEG, False, True),
    "flc2v": ("video-to-video transition", "#FPS: 16.", NEG, False, True),
    "vedit": ("video editing", "#FPS: 16.", NEG, False, False),
    "vcolor": ("video colorization", "natural, vibrant", COLOR_NEG, False, False),
    "vsr": ("video super-resolution", "clean, extremely detailed, high-resolution, 4k", SR_NEG, False, False),
    "vinp": ("video inpainting", "#FPS: 16.", NEG, False, False),
    "voutp": ("video outpainting", "#FPS: 16.", NEG, False, False),
    "t2i": ("text-to-image", "#FPS: 16.", NEG, True, True),
    "iedit": ("image editing", "#FPS: 16.", NEG, True, False),
    "icolor": ("image colorization", "natural, vibrant", COLOR_NEG, True, False),
    "isr": ("image super-resolution", "clean, extremely detailed, high-resolution, 4k", SR_NEG, True, False),
    "iinp": ("image inpainting", "#FPS: 16.", NEG, True, False),
    "ioutp": ("image outpainting", "#FPS: 16.", NEG, True, False),
}

W, H, F = 64, 48, 21  # small canvas; 21 = 4·5+1


def frames(n, h=H, w=W, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=g) * 0.8 + 0.1  # never exactly 0: known pixels are non-zero


def fake_depth(x):  # a deterministic stand-in depth: 1 + brightness (never 0)
    return 1.0 + x.mean(-1)


def inputs_for(key):
    t = TASKS[key]
    given = {}
    if "image" in t.needs:
        given["image"] = frames(1, seed=1)
    if "last_image" in t.needs:
        given["last_image"] = frames(1, seed=2)
    if "video" in t.needs:
        given["video"] = frames(30, seed=3)
    if "video_b" in t.needs:
        given["video_b"] = frames(30, seed=4)
    if "mask" in t.needs:
        m = torch.zeros(30 if "video" in t.needs else 1, H, W)
        m[:, 10:20, 20:40] = 1.0  # ComfyUI polarity would be 1 = change; the builder takes keep masks
        given["keep_mask"] = 1 - m
    return given


def test_sixteen_tasks_registered():
    assert set(TASKS) == set(EXPECTED) and len(TASKS) == 16


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_task(key):
    name, added, negative, is_image, generation = EXPECTED[key]
    task = TASKS[key]
    cond = build_condition(task, "A cat", W, H, F, depth_fn=fake_depth, official_canvas=False, **inputs_for(key))
    assert cond.positive == f"A cat {added} #task: {name}"
    assert cond.negative == negative and "#task" not in cond.negative
    n = 1 if is_image else (F if key in ("t2v", "i2v", "vext", "flf2v", "flc2v") else 21)
    assert cond.pixels.shape == (n, H, W, 3) and cond.keep.shape == (n, H, W) and cond.depth.shape == (n, H, W)
    assert cond.tensor().shape == (1, 5, n, H, W)
    assert cond.motion_score == (0.0 if is_image else 5.0)
    assert cond.cfg == (7.0 if "color" in key else 9.0)
    known = {
        "t2v": [], "t2i": [], "i2v": [0], "flf2v": [0, F - 1], "vext": list(range(8)),
        "flc2v": list(range(8)) + list(range(F - 8, F)),
    }.get(key, list(range(n)))
    assert cond.known_frames == known
    # mask polarity: known frames keep (1) somewhere, unknown frames are all 0, unknown pixels carry no colour
    for i in range(n):
        if i in known:
            assert cond.keep[i].max() == 1.0
        else:
            assert cond.keep[i].max() == 0.0 and cond.pixels[i].abs().max() == 0.0
    assert torch.all(cond.pixels[cond.keep == 0] == 0)
    # depth: only at the known frames of generation tasks (official), never for manipulation tasks
    for i in range(n):
        has_depth = bool(cond.depth[i].abs().max() > 0)
        assert has_depth == (generation and i in known), (key, i)
    if key in ("vinp", "iinp"):
        assert cond.keep[0, 10:20, 20:40].max() == 0.0 and cond.keep[0, 0, 0] == 1.0
    if "color" in key:
        rgb = cond.pixels[0]
        assert torch.allclose(rgb[..., 0], rgb[..., 1]) and torch.allclose(rgb[..., 1], rgb[..., 2])


def test_depth_everywhere_option_and_none():
    video = frames(30)
    every = build_condition(TASKS["vedit"], "x", W, H, F, video=video, depth_mode=DEPTH_MODES[1], depth_fn=fake_depth)
    assert all(every.depth[i].abs().max() > 0 for i in range(every.frames))
    none = build_condition(TASKS["i2v"], "x", W, H, F, image=frames(1), depth_mode=DEPTH_MODES[2])
    assert none.depth.abs().max() == 0


def test_i2v_pixels_are_the_fitted_image_times_mask():
    img = frames(1, h=H, w=W)
    cond = build_condition(TASKS["i2v"], "x", W, H, F, image=img, depth_fn=fake_depth)
    assert torch.allclose(cond.pixels[0], img[0] * 2 - 1, atol=1e-6)
    assert torch.equal(cond.keep[0], torch.ones(H, W))


def test_fitting_rules_official():
    # 1280×720 into the 640×352 box: scale = min(0.5, 0.48889) → 625.8 → 624 (÷16) × 352, centred: left 8
    p = fitting.plan(1280, 720, 640, 352)
    assert (p.canvas_width, p.canvas_height, p.width, p.height, p.left, p.top) == (640, 352, 624, 352, 8, 0)
    # portrait input swaps the landscape box
    p = fitting.plan(720, 1280, 640, 352)
    assert p.swapped and (p.canvas_width, p.canvas_height) == (352, 640)
    assert (p.width, p.height, p.left, p.top) == (352, 624, 0, 8)
    assert not fitting.plan(720, 1280, 640, 352, swap_portrait=False).swapped
    # the padding is marked to be generated
    cond = build_condition(TASKS["i2v"], "x", 640, 352, 5, image=frames(1, h=720, w=1280), depth_mode=DEPTH_MODES[2])
    assert cond.keep[0, :, :8].max() == 0 and cond.keep[0, :, 8:632].min() == 1 and cond.keep[0, :, 632:].max() == 0


def test_sr_places_low_res_video_bicubically_into_the_box():
    """As the official code: each frame an 8-bit PIL image resized with Pillow's bicubic."""
    import numpy as np
    from PIL import Image
    lr = frames(9, h=16, w=24)
    cond = build_condition(TASKS["vsr"], "x", 96, 64, 9, video=lr)
    want = torch.stack([torch.from_numpy(np.asarray(Image.fromarray((f.numpy() * 255).round().astype(np.uint8))
                                                    .resize((96, 64), Image.BICUBIC))) for f in lr]).float() / 255
    assert torch.equal(cond.canvas, want)


def test_video_tasks_use_first_4n_plus_1_frames():
    cond = build_condition(TASKS["vedit"], "x", W, H, 97, video=frames(30))
    assert cond.frames == 29  # (30 − 1)//4·4 + 1


def test_mask_generators_follow_the_paper_recipes():
    for seed in range(40):
        inner = masks.interior_mask(90, 160, seed)
        area = float((inner == 0).float().mean())
        assert 1 / 9 - 0.02 <= area <= 1 / 4 + 0.02, (seed, area)
        border = masks.border_mask(90, 160, seed)
        assert border.min() == 0 and border[45, 80] == 1  # strips at the edges, centre kept
        for axis_len, line in ((160, border[45]), (90, border[:, 80])):
            strips = int((line == 0).sum())
            assert strips == 0 or 1 / 8 * axis_len - 1 <= strips <= 2 * (1 / 4 * axis_len + 1)
    assert torch.equal(masks.interior_mask(90, 160, 3), masks.interior_mask(90, 160, 3))
    assert not torch.equal(masks.interior_mask(90, 160, 3), masks.interior_mask(90, 160, 4))
    cond = build_condition(TASKS["vinp"], "x", W, H, F, video=frames(30), mask_source=MASK_SOURCES[1], seed=7)
    assert 0 < float((cond.keep[0] == 0).float().mean()) <= 0.3


@pytest.mark.parametrize("key, source", [("vinp", "video"), ("voutp", "video"), ("iinp", "image"),
                                         ("ioutp", "image")])
def test_a_mask_that_keeps_nothing_warns_that_the_task_degenerates_to_generation(key, source):
    given = {source: frames(30 if source == "video" else 1)}
    n = given[source].shape[0]
    generation = "text-to-image" if source == "image" else "text-to-video"
    cond = build_condition(TASKS[key], "x", W, H, F, keep_mask=torch.zeros(n, H, W), **given)
    assert not cond.keep.any()
    assert cond.warnings == [f"the mask keeps nothing of the {source} (it marks every pixel to be generated): "
                             f"{TASKS[key].name} degenerates to {generation} generation"]
    hole = torch.ones(1, H, W)  # keeps all but one pixel: no warning
    hole[0, 5, 5] = 0
    assert build_condition(TASKS[key], "x", W, H, F, keep_mask=hole, **given).warnings == []
    for other in ("i2v", "t2v", "vedit"):  # tasks without a mask never warn
        assert build_condition(TASKS[other], "x", W, H, F, depth_fn=fake_depth, **inputs_for(other)).warnings == []


@pytest.mark.parametrize("bad, message", [
    (dict(key="i2v"), "image: the task 'image-to-video' needs this input"),
    (dict(key="flc2v", video=frames(30)), "video_b: the task"),
    (dict(key="i2v", image=frames(2)), "image: expected one image, got a batch of 2"),
    (dict(key="vedit", video=frames(3)), "video: video tasks need at least 5 frames"),
    (dict(key="vext", video=frames(4)), "video: needs at least 8 frames"),
    (dict(key="i2v", image=frames(1), frames=20), "frames: 20 is not 4n+1"),
    (dict(key="i2v", image=frames(1), width=70), "is not a multiple of 16"),
    (dict(key="vinp", video=frames(30), keep_mask=torch.ones(1, 10, 10)), "mask: 10×10 does not match"),
    (dict(key="vinp", video=frames(30), keep_mask=torch.ones(3, H, W)), "mask: 3 frames for a 30-frame input"),
    (dict(key="i2v", image=frames(1), use_depth_fn=False), "depth_model: this task uses depth"),
])
def test_bad_input_names_the_input(bad, message):
    bad = dict(bad)
    key = bad.pop("key")
    use_depth = bad.pop("use_depth_fn", True)
    args = dict(width=bad.pop("width", W), height=H, frames=bad.pop("frames", F))
    with pytest.raises(ValueError, match=re.escape(message)):
        build_condition(TASKS[key], "x", depth_fn=fake_depth if use_depth else None, **args, **bad)


def test_task_labels():
    assert task_from_label("image-to-video (i2v)").key == "i2v"
    with pytest.raises(ValueError):
        task_from_label("nonsense")


# --- the light adapter ------------------------------------------------------------------------------------

def test_adapter_key_names_and_kinds():
    sd = LightAdapter(hidden_size=96).state_dict()
    names = sorted({k.rsplit(".", 1)[0] for k in sd})
    assert names == ["blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6", "blocks.7",
                     "conv_in", "conv_out"]
    assert sd["conv_in.weight"].shape == (16, 5, 3, 3)
    channels = [(16, 16), (32, 16), (32, 32), (96, 32), (96, 96), (256, 96), (256, 256), (512, 256)]
    for i, (c_out, c_in) in enumerate(channels):
        w = sd[f"blocks.{i}.weight"]
        assert w.shape[:2] == (c_out, c_in)
        assert w.ndim == (5 if i in (1, 5) else 4), i  # 3D downsamplers at blocks.1 and blocks.5
    assert sd["conv_out.weight"].shape == (96, 512, 3, 3)


@pytest.mark.parametrize("t, h, w", [(1, 16, 16), (5, 32, 48), (9, 64, 32), (21, 48, 80)])
def test_adapter_output_grid(t, h, w):
    adapter = LightAdapter(hidden_size=8)
    out = adapter(torch.randn(1, 5, t, h, w))
    assert out.shape == (1, 8, (t - 1) // 4 + 1, h // 16, w // 16)


def test_adapter_refuses_bad_shapes():
    adapter = LightAdapter(hidden_size=8)
    with pytest.raises(ValueError, match="4n\\+1"):
        adapter(torch.randn(1, 5, 4, 16, 16))
    with pytest.raises(ValueError, match="multiples of 16"):
        adapter(torch.randn(1, 5, 5, 20, 16))
