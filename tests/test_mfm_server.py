"""The MfM condition builder through the real server, driving core's WanVaceToVideo with a tiny Wan VACE model."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import load_latent
from harness.comfy_server import assert_combo_refused, flagged_inputs
from harness.graph import Graph
from harness.tiny_models import UMT5, WAN21_VACE, WAN21_VAE

pytestmark = pytest.mark.server

BUILDER = "UniCascadeMfMCondition"
SETTINGS = dict(width=64, height=48, frames=9, fit="pad", swap_portrait=True, motion_score=5.0, fps=16,
                mask_source="input mask", mask_seed=0, depth_mode="none", clip_frames=8)


@pytest.fixture
def input_image(comfy):
    rng = np.random.default_rng(0)
    pixels = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(f"{comfy.base}/input/unicascade_mfm_test.png")
    return "unicascade_mfm_test.png", pixels


def builder(g, task, image=None, **overrides):
    inputs = {**SETTINGS, "task": task, "prompt": "A corgi on a beach", **overrides}
    if image is not None:
        inputs["image"] = image
    return g.node(BUILDER, **inputs)


def test_i2v_condition_drives_wan_vace(comfy, input_image):
    name, pixels = input_image
    g = Graph()
    image = g.node("LoadImage", image=name)
    cond = builder(g, "image-to-video (i2v)", image=image[0])
    g.node("PreviewAny", node_id="positive", source=cond[1])
    g.node("PreviewAny", node_id="negative", source=cond[2])
    g.node("SaveImage", node_id="control", images=cond[6], filename_prefix=f"{comfy.prefix}_control")
    model = g.node("UNETLoader", unet_name=WAN21_VACE, weight_dtype="default")
    clip = g.node("UniCascadeTestTinyTextEncoderLoader", clip_name=UMT5)
    pos = g.node("CLIPTextEncode", clip=clip[0], text=cond[1])
    neg = g.node("CLIPTextEncode", clip=clip[0], text=cond[2])
    vae = g.node("VAELoader", vae_name=WAN21_VAE)
    vace = g.node("WanVaceToVideo", positive=pos[0], negative=neg[0], vae=vae[0], width=cond[8], height=cond[9],
                  length=cond[10], batch_size=1, strength=1.0, control_video=cond[6], control_masks=cond[7])
    sampled = g.node("KSampler", model=model[0], seed=1, steps=2, cfg=4.0, sampler_name="euler",
                     scheduler="simple", positive=vace[0], negative=vace[1], latent_image=vace[2], denoise=1.0)
    trimmed = g.node("TrimVideoLatent", samples=sampled[0], trim_amount=vace[3])
    g.node("SaveLatent", samples=trimmed[0], filename_prefix=comfy.prefix)
    entry = comfy.run(g.prompt())
    out = entry["outputs"]
    assert out["positive"]["text"][0] == "A corgi on a beach #FPS: 16. #task: image-to-video"
    assert out["negative"]["text"][0].startswith("static, watermark, subtitles")
    latent = load_latent(comfy, comfy.prefix)
    assert latent.shape == (1, 16, 3, 6, 8)  # 9 frames → 3 latent frames, 48×64 → 6×8
    controls = out["control"]["images"]
    assert len(controls) == 9
    first = np.asarray(Image.open(comfy.output_path(controls[0]["subfolder"], controls[0]["filename"])))
    later = np.asarray(Image.open(comfy.output_path(controls[4]["subfolder"], controls[4]["filename"])))
    assert np.abs(first.astype(int) - pixels.astype(int)).max() <= 1  # frame 0 is the image
    assert np.all(np.abs(later.astype(int) - 128) <= 1)  # unknown frames are VACE grey


def test_inpainting_mask_polarity_through_the_server(comfy, input_image):
    name, _ = input_image
    g = Graph()
    image = g.node("LoadImage", image=name)
    video = g.node("RepeatImageBatch", image=image[0], amount=9)
    solid = g.node("SolidMask", value=0.0, width=64, height=48)
    hole = g.node("SolidMask", value=1.0, width=16, height=16)
    mask = g.node("MaskComposite", destination=solid[0], source=hole[0], x=16, y=16, operation="add")
    cond = builder(g, "video inpainting (vinp)", video=video[0], mask=mask[0])
    g.node("SaveImage", node_id="gen", images=g.node("MaskToImage", mask=cond[4])[0],
           filename_prefix=f"{comfy.prefix}_gen")
    g.node("SaveImage", node_id="ctl", images=g.node("MaskToImage", mask=cond[7])[0],
           filename_prefix=f"{comfy.prefix}_ctl")
    out = comfy.run(g.prompt())["outputs"]
    for key in ("gen", "ctl"):
        files = out[key]["images"]
        assert len(files) == 9
        m = np.asarray(Image.open(comfy.output_path(files[0]["subfolder"], files[0]["filename"])).convert("L"))
        assert m[16:32, 16:32].min() == 255 and m[:16].max() == 0  # ComfyUI polarity: 1 = generate the hole


def test_inpainting_with_a_mask_that_keeps_nothing_warns_in_the_log(comfy, input_image):
    name, _ = input_image
    warning = ("UniCascade: MfM Condition: the mask keeps nothing of the {} (it marks every pixel to be generated): "
               "{} degenerates to {} generation")
    video_warning = warning.format("video", "video inpainting", "text-to-video")
    image_warning = warning.format("image", "image outpainting", "text-to-image")
    before = comfy.log_text()
    g = Graph()
    image = g.node("LoadImage", image=name)
    video = g.node("RepeatImageBatch", image=image[0], amount=9)
    everything = g.node("SolidMask", value=1.0, width=64, height=48)  # ComfyUI polarity: generate every pixel
    vinp = builder(g, "video inpainting (vinp)", video=video[0], mask=everything[0])
    ioutp = builder(g, "image outpainting (ioutp)", image=image[0], mask=everything[0])
    for key, cond in (("vinp", vinp), ("ioutp", ioutp)):
        g.node("SaveImage", node_id=key, images=g.node("MaskToImage", mask=cond[4])[0],
               filename_prefix=f"{comfy.prefix}_{key}")
    out = comfy.run(g.prompt())["outputs"]
    for key in ("vinp", "ioutp"):  # it runs, and the generate mask is all 1
        m = np.asarray(Image.open(comfy.output_path(out[key]["images"][0]["subfolder"],
                                                    out[key]["images"][0]["filename"])).convert("L"))
        assert m.min() == 255, key
    log = comfy.log_text()
    assert log.count(video_warning) == before.count(video_warning) + 1
    assert log.count(image_warning) == before.count(image_warning) + 1

    g = Graph()  # a mask that keeps something: no warning
    image = g.node("LoadImage", image=name)
    video = g.node("RepeatImageBatch", image=image[0], amount=9)
    hole = g.node("SolidMask", value=1.0, width=16, height=16)
    mask = g.node("MaskComposite", destination=g.node("SolidMask", value=0.0, width=64, height=48)[0],
                  source=hole[0], x=16, y=16, operation="add")
    g.node("PreviewAny", source=builder(g, "video inpainting (vinp)", video=video[0], mask=mask[0])[1])
    comfy.run(g.prompt())
    assert comfy.log_text().count("UniCascade: MfM Condition: the mask keeps nothing") == \
        log.count("UniCascade: MfM Condition: the mask keeps nothing")


@pytest.mark.parametrize("overrides, message", [
    (dict(task="image-to-video (i2v)"), "image: the task 'image-to-video' needs this input"),
    (dict(task="video extending (vext)", frames=8), "frames: 8 is not 4n+1"),
])
def test_bad_input_is_named_and_the_server_goes_on(comfy, input_image, overrides, message):
    g = Graph()
    cond = builder(g, **{"task": overrides.pop("task")}, **overrides)
    g.node("PreviewAny", source=cond[1])
    if "video extending" in json.dumps(g.prompt()):
        video = g.node("LoadImage", image=input_image[0])
        g.nodes[cond.id]["inputs"]["video"] = video[0]
    error = comfy.run_expecting_error(g.prompt())
    assert error["node_type"] == BUILDER and message in error["exception_message"]
    g = Graph()
    cond = builder(g, "text-to-video (t2v)")
    g.node("PreviewAny", node_id="p", source=cond[1])
    assert comfy.run(g.prompt())["outputs"]["p"]["text"][0].endswith("#task: text-to-video")


def test_refusals_and_run_time_checks_name_only_their_input(comfy):
    """validate_inputs takes the task only (ComfyUI marks every input it takes with its error); the other combos
    are checked when the node runs, with a ValueError naming the input."""
    g = Graph()
    cond = builder(g, "no such task")
    g.node("PreviewAny", source=cond[1])
    body = comfy.validate_error(g.prompt())
    assert flagged_inputs(body) == {BUILDER: ["task"]}, body
    assert "task: 'no such task' is not one of" in json.dumps(body)
    for name, value in (("fit", "squash"), ("mask_source", "drawn"), ("depth_mode", "all frames")):
        g = Graph()
        cond = builder(g, "text-to-video (t2v)", **{name: value})
        g.node("PreviewAny", source=cond[1])
        assert_combo_refused(comfy, g.prompt(), BUILDER, name, value, f"{name}: {value!r} is not one of")


def test_depth_at_the_known_frame_of_i2v_from_depth_anything(comfy, input_image):
    from harness.tiny_depth import TINY

    g = Graph()
    image = g.node("LoadImage", image=input_image[0])
    depth_model = g.node("UniCascadeDepthAnythingLoader", model_name=TINY, precision="auto")
    cond = builder(g, "image-to-video (i2v)", image=image[0], depth_mode="known frames of generation tasks (official)",
                   depth_model=depth_model[0])
    g.node("SaveImage", node_id="depth", images=cond[5], filename_prefix=f"{comfy.prefix}_depth")
    files = comfy.run(g.prompt())["outputs"]["depth"]["images"]
    frames = [np.asarray(Image.open(comfy.output_path(f["subfolder"], f["filename"])).convert("L")) for f in files]
    assert len(frames) == 9
    assert frames[0].std() > 0 and all(f.max() == frames[1].max() == f.min() for f in frames[1:])
