"""One rule for RGBA on every IMAGE input of the pack (kit.py): the alpha channel is dropped with a log line
naming the node and the input, and the node computes what it computes from the RGB frames. In process for the
helper, and through the real server for the Depth Estimator, the four IMAGE inputs of MfM Condition and Pyramid
Reflection QA's images (UniMMVSR's inputs are wired to the same helper in their own files)."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from harness.graph import Graph

NAME = "unicascade_rgba_test.png"
H, W = 48, 64


def test_rgb_frames_helper(pack, caplog):
    rgb_frames = pack("kit").rgb_frames
    rgb = torch.rand(2, 8, 8, 3)
    with caplog.at_level(logging.WARNING):
        assert rgb_frames(rgb, "images", "Some Node") is rgb
        assert rgb_frames(None, "images", "Some Node") is None
        for passed in (torch.zeros(0, 3, 0, 0), torch.rand(8, 8, 4), "not a tensor"):  # the node's checks name these
            assert rgb_frames(passed, "images", "Some Node") is passed
    assert caplog.text == ""
    rgba = torch.cat([rgb, torch.rand(2, 8, 8, 1)], dim=-1)
    with caplog.at_level(logging.WARNING):
        out = rgb_frames(rgba, "last_image", "Some Node")
    assert torch.equal(out, rgb)
    assert "UniCascade: Some Node: last_image is RGBA; its alpha channel is dropped (only RGB is used)" in caplog.text
    for channels in (1, 2, 5):
        with pytest.raises(ValueError, match=f"video: frames have {channels} channels; RGB \\(3\\) or RGBA \\(4\\) "
                                             "images are needed"):
            rgb_frames(torch.rand(1, 8, 8, channels), "video", "Some Node")


@pytest.fixture
def image(comfy):
    rng = np.random.default_rng(3)
    low = rng.random((H // 8, W // 8, 3))
    pixels = (np.kron(low, np.ones((8, 8, 1))) * 255).astype(np.uint8)  # blocks: depth differs across the frame
    Image.fromarray(pixels).save(os.path.join(comfy.base, "input", NAME))
    return pixels


def rgb_and_rgba(g: Graph):
    """(RGB, RGBA) IMAGE outputs of the same picture: Join Image with Alpha adds an opaque alpha channel."""
    loaded = g.node("LoadImage", image=NAME)
    return loaded[0], g.node("JoinImageWithAlpha", image=loaded[0], alpha=loaded[1])[0]


def saved(comfy, entry, node: str) -> np.ndarray:
    return np.stack([np.asarray(Image.open(comfy.output_path(i["subfolder"], i["filename"])))
                     for i in entry["outputs"][node]["images"]])


def log_lines(comfy, node: str, names) -> dict[str, int]:
    text = comfy.log_text()
    return {n: text.count(f"UniCascade: {node}: {n} is RGBA; its alpha channel is dropped") for n in names}


@pytest.mark.server
def test_the_join_image_with_alpha_output_is_rgba(comfy, image):
    """The test input really has 4 channels (else the tests below would prove nothing)."""
    g = Graph()
    _, rgba = rgb_and_rgba(g)
    g.node("SaveImage", node_id="png", images=rgba, filename_prefix=comfy.prefix)
    entry = comfy.run(g.prompt())
    assert saved(comfy, entry, "png").shape == (1, H, W, 4)


@pytest.mark.server
def test_depth_estimator_drops_alpha(comfy, image):
    from harness.tiny_depth import TINY

    before = log_lines(comfy, "Depth Estimator", ["images"])
    g = Graph()
    model = g.node("UniCascadeDepthAnythingLoader", model_name=TINY, precision="auto")
    for key, frames in zip(("rgb", "rgba"), rgb_and_rgba(g)):
        depth = g.node("UniCascadeDepthEstimator", depth_model=model[0], images=frames, normalization="per frame",
                       invert=False, batch_size=1)
        g.node("SaveImage", node_id=key, images=depth[1], filename_prefix=f"{comfy.prefix}_{key}")
    entry = comfy.run(g.prompt())
    rgb, rgba = saved(comfy, entry, "rgb"), saved(comfy, entry, "rgba")
    assert rgb.shape == (1, H, W, 3) and rgb.std() > 0
    assert np.array_equal(rgb, rgba)
    assert log_lines(comfy, "Depth Estimator", ["images"]) == {"images": before["images"] + 1}


MFM_SETTINGS = dict(prompt="A corgi", width=64, height=48, frames=9, fit="pad", swap_portrait=True,
                    motion_score=5.0, fps=16, mask_source="input mask", mask_seed=0, depth_mode="none", clip_frames=2)


@pytest.mark.server
def test_mfm_condition_drops_alpha_on_all_four_image_inputs(comfy, image):
    names = ["image", "last_image", "video", "video_b"]
    before = log_lines(comfy, "MfM Condition", names)
    g = Graph()
    rgb, rgba = rgb_and_rgba(g)
    for key, frames in (("rgb", rgb), ("rgba", rgba)):
        clip = g.node("RepeatImageBatch", image=frames, amount=3)[0]
        flf = g.node("UniCascadeMfMCondition", task="image-to-image transition (flf2v)", image=frames,
                     last_image=frames, **MFM_SETTINGS)
        flc = g.node("UniCascadeMfMCondition", task="video-to-video transition (flc2v)", video=clip,
                     video_b=clip, **MFM_SETTINGS)
        for task, node in (("flf", flf), ("flc", flc)):
            g.node("SaveImage", node_id=f"{task}_{key}", images=node[3], filename_prefix=f"{comfy.prefix}_{task}")
    entry = comfy.run(g.prompt())
    for task in ("flf", "flc"):
        rgb_preview, rgba_preview = saved(comfy, entry, f"{task}_rgb"), saved(comfy, entry, f"{task}_rgba")
        assert rgb_preview.shape == (9, H, W, 3) and rgb_preview.std() > 0
        assert np.array_equal(rgb_preview, rgba_preview), task
    after = log_lines(comfy, "MfM Condition", names)
    assert after == {n: before[n] + 1 for n in names}, (before, after)


@pytest.mark.server
def test_pyramid_reflection_images_drop_alpha(comfy, image):
    from harness.tiny_reflection import SIGLIP, TEXT_LLM, VLM

    before = log_lines(comfy, "Pyramid Reflection QA", ["images"])
    g = Graph()
    _, rgba = rgb_and_rgba(g)
    node = g.node("UniCascadePyramidReflectionQA", node_id="qa", question="What is shown?", images=rgba,
                  siglip=g.node("UniCascadeSigLIPLoader", model_name=SIGLIP, precision="auto")[0],
                  vlm=g.node("UniCascadeLocalLLMLoader", model_name=VLM, precision="auto")[0],
                  llm=g.node("UniCascadeLocalLLMLoader", model_name=TEXT_LLM, precision="auto")[0],
                  question_type="static (expand)", pool_size=4, caption_frames=1, static_sizes="1",
                  dynamic_sizes="4, 2", mmr_lambda=0.5, accept_threshold=0.7, max_rounds=1, max_new_tokens=8,
                  image_max_side=448, embed_batch=4)
    g.node("SaveImage", node_id="keys", images=node[2], filename_prefix=comfy.prefix)
    entry = comfy.run(g.prompt())
    assert json.loads(entry["outputs"]["qa"]["text"][-1])["video"]["frames"] == 1
    keys = saved(comfy, entry, "keys")
    assert keys.shape == (1, H, W, 3) and np.abs(keys[0].astype(int) - image.astype(int)).max() <= 1
    assert log_lines(comfy, "Pyramid Reflection QA", ["images"]) == {"images": before["images"] + 1}
