"""The trainer's data side (UniMMVSR §3.3–3.4, A.4): the paper's curriculum config, task and stage frequencies over
thousands of draws, samples per task (references padded as the References node pads them, LR upsampled as the
Upsampler does), SDEdit with k = 0 returning its input, and the determinism that exact resume relies on."""
import functools
import json
import math
import re
import os

import numpy as np
import pytest
import torch

from harness.paths import REPO
from harness.training_setup import write_workspace


@pytest.fixture(scope="module")
def config_module(pack):
    return pack("training.unimmvsr.config")


@pytest.mark.host_independent
def test_the_papers_curriculum_parses(config_module):
    cfg = config_module.load(os.path.join(REPO, "configs", "unimmvsr", "paper.toml"))
    assert [s.frames for s in cfg.stages] == [21, 21, 21, 77]
    assert [s.tasks for s in cfg.stages] == [
        {"t2v": 1.0}, {"t2v": 0.6, "mi2v": 0.4}, {"t2v": 0.5, "mi2v": 0.3, "editing": 0.2},
        {"t2v": 0.5, "mi2v": 0.3, "editing": 0.2}]
    tr = cfg.training
    assert (tr.learning_rate, tr.batch_size, tr.text_dropout, tr.aug_t_range) == (1e-4, 32, 0.1, (200, 600))
    assert cfg.degradation.sdedit_k == (5, 15) and cfg.model.shift == 1.0


@pytest.mark.host_independent
def test_set_overrides_reach_one_stage_and_bad_indexes_are_named(config_module):
    path = os.path.join(REPO, "configs", "unimmvsr", "demo.toml")
    base = config_module.load(path)
    longer = config_module.load(path, {"stages.1.steps": 11000, "training.learning_rate": 5e-4})
    assert [s.steps for s in longer.stages] == [base.stages[0].steps, 11000]
    assert longer.total_steps == base.stages[0].steps + 11000 and longer.training.learning_rate == 5e-4
    assert longer.stages[1].tasks == base.stages[1].tasks
    for bad in ("stages.2.steps", "stages.x.steps", "stages.1", "stage.1.steps"):
        with pytest.raises(config_module.ConfigError, match=re.escape(f"--set {bad}")):
            config_module.load(path, {bad: 1})


@pytest.mark.parametrize("change, message", [
    ({"stages": [{"name": "a", "steps": 1, "frames": 20, "width": 64, "height": 64}]}, "frames 20 is not 4n+1"),
    ({"stages": [{"name": "a", "steps": 1, "frames": 5, "width": 64, "height": 64, "tasks": {"sr": 1}}]},
     "unknown task(s) sr"),
    ({"stages": [{"name": "a", "steps": 1, "frames": 5, "width": 80, "height": 64}]}, "multiple of 16·scale"),
    ({"training": {"aug_t_range": [100, 1200]}}, "aug_t_range"),
    ({"training": {"sharding": "zero3"}}, "sharding: ddp or fsdp"),
    ({"training": {"lr_schedule": "step"}}, "lr_schedule: constant or cosine"),
    ({"training": {"keep_last": -1}}, "keep_last must be ≥ 0"),
    ({"data": {"manifest": "m", "text_tokens": -4}}, "text_tokens must be ≥ 0"),
    ({"data": {"manifest": "m", "crop_aspect": [1.5, 0.7]}}, "crop_aspect: [] or [lo, hi] with 0 < lo ≤ hi"),
])
@pytest.mark.host_independent
def test_bad_configs_name_the_key(config_module, change, message):
    data = {"model": {"parent": "p", "vae": "v"}, "data": {"manifest": "m"},
            "stages": [{"name": "a", "steps": 1, "frames": 5, "width": 64, "height": 64}]}
    data.update(change)
    with pytest.raises(config_module.ConfigError, match=re.escape(message)):
        config_module.parse(data)


@pytest.mark.host_independent
def test_learning_rate_schedule_warms_up_then_follows_half_a_cosine(pack):
    rate = pack("training.unimmvsr.schedule").learning_rate_at
    peak, total, warm, floor = 2e-3, 120, 20, 0.05
    got = [rate(s, total, peak, "cosine", warm, floor) for s in range(total)]
    for s in range(warm):
        assert got[s] == pytest.approx(peak * (s + 1) / warm)
    for s in range(warm, total):  # independent: cos from 0 at the first decayed step to π at the last
        angle = math.pi * (s - warm) / (total - 1 - warm)
        assert got[s] == pytest.approx(peak * floor + peak * (1 - floor) * (1 + math.cos(angle)) / 2)
    assert got[warm] == pytest.approx(peak) and got[-1] == pytest.approx(peak * floor)
    assert all(a >= b for a, b in zip(got[warm:], got[warm + 1:]))
    assert [rate(s, total, peak) for s in (0, 60, 119)] == [peak] * 3


@pytest.mark.host_independent
def test_task_and_stage_frequencies_follow_the_config(pack, config_module):
    curriculum = pack("training.unimmvsr.curriculum")
    cfg = config_module.load(os.path.join(REPO, "configs", "unimmvsr", "paper.toml"))
    stage = cfg.stages[2]
    n = 3000
    counts = {"t2v": 0, "mi2v": 0, "editing": 0}
    for i in range(n):
        counts[curriculum.draw_task(stage, curriculum.sample_rng(0, i // 32, i % 32))] += 1
    for task, p in stage.tasks.items():
        sd = math.sqrt(n * p * (1 - p))
        assert abs(counts[task] - n * p) < 4 * sd, (task, counts)
    # stages by step: 4000 each, the last one going on past its end
    got = [curriculum.stage_at(cfg.stages, s)[0] for s in (0, 3999, 4000, 7999, 8000, 12000, 15999, 16000, 20000)]
    assert got == [0, 0, 1, 1, 2, 3, 3, 3, 3]
    # the slots of a global batch: ranks × micro-batches × accumulation cover 0 … B − 1 exactly once
    slots = sorted(curriculum.slot_of(a, r, i, 2, 4) for a in range(4) for r in range(4) for i in range(2))
    assert slots == list(range(32))


@pytest.fixture(scope="module")
def builder(pack, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("data"))
    config_path = write_workspace(root, degradation={"sdedit_probability": 0.0})
    cfg = pack("training.unimmvsr.config").load(config_path)
    items = pack("training.unimmvsr.manifest").read(cfg.path(cfg.data.manifest))
    return cfg, pack("training.unimmvsr.samples").SampleBuilder(cfg, items)


@pytest.mark.host_independent
def test_draws_are_a_pure_function_of_the_step_and_slot(builder):
    cfg, b = builder
    stage = cfg.stages[1]
    a1, a2, other = b.draw(1, stage, 7, 3), b.draw(1, stage, 7, 3), b.draw(1, stage, 7, 4)
    assert a1 == a2 and a1 != other
    p1, p2 = b.pixels(a1, stage), b.pixels(a2, stage)
    assert torch.equal(p1.hr, p2.hr) and torch.equal(p1.lr, p2.lr)
    n, dropped = 2000, 0
    sigmas, augs = [], []
    for i in range(n):
        d = b.draw(1, stage, i, 0)
        dropped += d.prompt == ""
        sigmas.append(d.sigma)
        augs.append(d.aug_t)
    sd = math.sqrt(n * 0.1 * 0.9)
    assert abs(dropped - 0.1 * n) < 4 * sd                      # the null prompt 10% of the time
    assert 200 <= min(augs) and max(augs) <= 600 and abs(np.mean(augs) - 400) < 10
    assert 0 <= min(sigmas) and max(sigmas) <= 1 and abs(np.mean(sigmas) - 0.5) < 0.03


@pytest.mark.host_independent
def test_one_task_per_step_shares_a_step_s_task_among_its_slots_and_keeps_the_mix(pack, builder):
    """[training] one_task_per_step: all slots (and redraws) of a step get one task, drawn per step from the stage's
    mix — the per-step frequencies follow the mix; the default draws each slot's own task, so a step mixes them."""
    import dataclasses
    cfg, b = builder
    stage = cfg.stages[1]
    shared = pack("training.unimmvsr.samples").SampleBuilder(
        dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, one_task_per_step=True)), b.items)
    n, counts, mixed = 1200, {"t2v": 0, "mi2v": 0, "editing": 0}, 0
    for step in range(n):
        tasks = {shared.draw(1, stage, step, slot, attempt).task for slot in range(8) for attempt in (0, 3)}
        assert len(tasks) == 1, (step, tasks)
        counts[tasks.pop()] += 1
        mixed += len({b.draw(1, stage, step, slot).task for slot in range(8)}) > 1
    for task, p in stage.tasks.items():
        assert abs(counts[task] - n * p) < 4 * math.sqrt(n * p * (1 - p)), (task, counts)
    assert mixed > 0.8 * n   # per-slot tasks: P(8 slots agree) = 0.5⁸ + 0.3⁸ + 0.2⁸ ≈ 0.4%
    assert shared.draw(1, stage, 5, 2) == shared.draw(1, stage, 5, 2)   # still a pure function of (step, slot)


@pytest.mark.host_independent
def test_samples_per_task(builder):
    from core.unimmvsr.references import PAD_VALUE
    from core.unimmvsr.upsampling import upscale_frames
    cfg, b = builder
    stage = cfg.stages[1]
    seen = set()
    for slot in range(60):
        d = b.draw(1, stage, 100, slot)
        if d.task in seen:
            continue
        seen.add(d.task)
        s = b.pixels(d, stage)
        assert s.hr.shape == (5, 64, 64, 3) and s.lr.shape == (5, 16, 16, 3)
        assert torch.equal(s.lr_up, upscale_frames(s.lr, 64, 64))
        if d.task == "t2v":
            assert not s.id_images and s.reference_video is None
        if d.task == "mi2v":
            assert 1 <= len(s.id_images) <= cfg.data.max_id_images
            for image in s.id_images:
                assert image.shape == (1, 64, 64, 3)
            if "rabbit" in d.item.prompt:  # its 40×48 ID image file, padded mid-grey around
                assert torch.all(s.id_images[0][0, :, :4] == PAD_VALUE)
        if d.task == "editing":
            assert s.reference_video.shape == (5, 64, 64, 3)
            assert not torch.equal(s.reference_video, s.hr)   # another segment of the clip
    assert seen == {"t2v", "mi2v", "editing"}


def test_sdedit_with_k_zero_returns_its_input_and_k_steps_change_it(pack, builder):
    import comfy.sd
    import comfy.utils
    cfg, _ = builder
    encoding = pack("training.unimmvsr.encoding")
    sdedit_mod = pack("training.unimmvsr.sdedit")
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(cfg.path(cfg.model.vae), safe_load=True))
    base = comfy.sd.load_diffusion_model(cfg.path(cfg.model.parent))
    degrader = sdedit_mod.SDEditDegrader(base, vae, encoding.TextEncoder(None, cfg.path(cfg.data.cache_dir)), steps=10,
                                         cfg=2.0)
    frames = torch.rand(5, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    assert degrader(frames, 0, 1, "a big rabbit in a green meadow, cartoon") is frames
    a = degrader(frames, 3, 1, "a big rabbit in a green meadow, cartoon")
    b = degrader(frames, 3, 1, "a big rabbit in a green meadow, cartoon")
    assert a.shape == frames.shape and torch.equal(a, b)
    assert (a - frames).abs().mean() > 1e-3
    sig = degrader.sigmas(3)
    assert len(sig) == 4 and float(sig[-1]) == 0.0 and float(sig[0]) < 1.0   # the last 3 of 10 steps
    with pytest.raises(ValueError, match="outside"):
        degrader(frames, 11, 1, "")


@pytest.mark.parametrize("size,rescale,aspect", [((720, 1280), (0.25, 0.6), ()), ((272, 640), (0.3, 0.9), ()),
                                                 ((144, 176), (), ()), ((40, 56), (), ()),
                                                 ((720, 1280), (0.125, 0.6), (0.7, 1.4)), ((144, 176), (), (0.5, 2.0)),
                                                 ((96, 120), (0.9, 1.0), (0.6, 1.6))])
@pytest.mark.host_independent
def test_a_crop_equals_scaling_the_whole_frames_then_cutting_the_box(pack, size, rescale, aspect):
    """apply_crop touches only the pixels under the box; the result is what resizing the whole frames (area down,
    bicubic up) and cutting gives, computed here with torch's own interpolate. With ``aspect`` the two axes are
    scaled apart, by a height/width ratio inside the range (never below covering the crop); when that shrinks one
    axis and enlarges the other, each axis is resized its own way."""
    samples = pack("training.unimmvsr.samples")
    h, w = size
    g = torch.Generator().manual_seed(h)
    frames = torch.randint(0, 256, (3, h, w, 3), dtype=torch.uint8, generator=g)
    ratios = []
    for seed in range(6):
        box = samples.crop_box(h, w, 64, 48, "native", np.random.default_rng(seed), rescale, aspect)
        scale, top, left = box
        sy, sx = scale if aspect else (scale, scale)
        ratios.append(sy / sx)
        nh, nw = max(48, round(h * sy)), max(64, round(w * sx))
        assert nh >= 48 and nw >= 64 and 0 <= top <= nh - 48 and 0 <= left <= nw - 64
        x = frames.float().div(255).movedim(-1, 1)
        if (nh, nw) != (h, w):   # one 2-D resize when both axes go the same way, else height then width
            both = (nh > h) == (nw > w) or nh == h or nw == w
            steps = [(nh, nw)] if both else [(nh, w), (nh, nw)]
            for size in steps:
                up = size[0] > x.shape[-2] or size[1] > x.shape[-1]
                x = torch.nn.functional.interpolate(x, size=size, mode="bicubic" if up else "area",
                                                    **({"align_corners": False} if up else {}))
            x = x.clamp(0, 1)
        expected = x[:, :, top:top + 48, left:left + 64].movedim(1, -1)
        got = samples.apply_crop(frames, box, 64, 48)
        assert got.shape == (3, 48, 64, 3) and got.dtype == torch.float32
        assert torch.allclose(got, expected, atol=1e-6), (size, seed)
    if aspect:   # a different stretch per draw, each inside the range (these frames never force an axis up)
        assert all(aspect[0] - 1e-9 <= r <= aspect[1] + 1e-9 for r in ratios), ratios
        assert len(set(round(r, 6) for r in ratios)) == len(ratios), ratios


def _plan_by_hand(frames: np.ndarray, applied: list, temporal: bool = True) -> np.ndarray:
    """[T, H, W, 3] numpy frames transformed as a sample's record says (independently of samples.augment)."""
    for op in applied:
        if op == "hflip":
            frames = frames[:, :, ::-1]
        elif op == "vflip":
            frames = frames[:, ::-1]
        elif op == "transpose":
            frames = np.swapaxes(frames, 1, 2)
    channels = [op for op in applied if op.startswith("channels")]
    if channels:
        frames = frames[..., json.loads(channels[0][len("channels"):])]   # the recorded order, e.g. "channels[2, 0, 1]"
    if temporal and "reverse" in applied:
        frames = frames[::-1]
    return np.ascontiguousarray(frames)


@pytest.mark.host_independent
def test_augmentations_transform_the_target_and_its_references_alike(pack, builder):
    """[data] augmentations: each flip/transpose/reversal on about half the samples, channel orders all six; the
    target window, its ID frames and its reference video are cut from the clip at the recorded box and transformed
    as the record says; the same draw without augmentations is the same crop untransformed; validation samples are
    never augmented."""
    import dataclasses
    samples = pack("training.unimmvsr.samples")
    cfg, plain = builder
    names = ("hflip", "vflip", "transpose", "reverse", "channels")
    # drawn afresh per sample (no latent cache: a cache keeps cache_variants fixed draws per clip); Table 3 off so the
    # ID images stay pixel-aligned
    data = dataclasses.replace(cfg.data, cache_dir="", reference_augmentation=False, id_crop=())
    plain = samples.SampleBuilder(dataclasses.replace(cfg, data=data), plain.items)
    b = samples.SampleBuilder(dataclasses.replace(cfg, data=dataclasses.replace(data, augmentations=names)),
                              plain.items)
    stage = cfg.stages[1]
    counts, orders, tasks = dict.fromkeys(names[:4], 0), set(), set()
    n = 240
    for slot in range(n):
        d = b.draw(1, stage, 3, slot)
        s = b.pixels(d, stage)
        applied = s.record["augmentation"]
        for name in names[:4]:
            counts[name] += name in applied
        orders.add(next(op for op in applied if op.startswith("channels")))
        if slot >= 40 or (d.task == "mi2v" and d.item.id_images):
            continue
        tasks.add(d.task)
        video = full_decode(d.item.video)   # every frame, decoded independently of the trainer's seeking reader
        start, box = s.record["start"], s.record["box"]
        clip = lambda a, k: samples.apply_crop(video[a:a + k], box, stage.width, stage.height).numpy()  # noqa: E731
        assert np.array_equal(s.hr.numpy(), _plan_by_hand(clip(start, stage.frames), applied)), slot
        if d.task == "mi2v":
            for image, frame in zip(s.id_images, s.record["id_frames"]):
                assert np.array_equal(image.numpy(), _plan_by_hand(clip(frame, 1), applied, temporal=False))
        if d.task == "editing":
            ref = s.reference_video.numpy()
            assert np.array_equal(ref, _plan_by_hand(clip(s.record["reference_start"], ref.shape[0]), applied))
        # the plain builder's sample of the same draw is the same crop, untransformed
        p = plain.pixels(d, stage)
        assert "augmentation" not in p.record and (p.record["start"], p.record["box"]) == (start, box)
        assert np.array_equal(s.hr.numpy(), _plan_by_hand(p.hr.numpy(), applied))
    assert tasks == {"t2v", "mi2v", "editing"}
    sd = math.sqrt(n * 0.25)
    for name, count in counts.items():
        assert abs(count - n / 2) < 4 * sd, (name, count)
    assert len(orders) == 6
    val = b.build_validation(plain.items[0], stage, "mi2v", seed=1)
    assert "augmentation" not in val.record
    assert torch.equal(val.hr, plain.build_validation(plain.items[0], stage, "mi2v", seed=1).hr)


@pytest.mark.parametrize("augmentations, message", [
    (["hflip", "rotate"], "augmentations: distinct names among hflip, vflip, transpose, reverse, channels"),
    (["hflip", "hflip"], "augmentations: distinct names"),
    ("hflip", "augmentations: expected a list of names"),
    (["transpose"], "transpose needs square crops"),
])
@pytest.mark.host_independent
def test_bad_augmentations_are_named(config_module, augmentations, message):
    data = {"model": {"parent": "p", "vae": "v"}, "data": {"manifest": "m", "augmentations": augmentations},
            "stages": [{"name": "a", "steps": 1, "frames": 5, "width": 128, "height": 64}]}
    with pytest.raises(config_module.ConfigError, match=re.escape(message)):
        config_module.parse(data)


@functools.lru_cache(maxsize=4)
def full_decode(path: str) -> torch.Tensor:
    """Every frame of a clip, decoded whole (independently of the trainer's seeking reader); once per clip."""
    from core.video import decode_video_stream

    return (decode_video_stream(path).frames * 255).round().to(torch.uint8)
