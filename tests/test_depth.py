"""Depth Anything V2: normalisation modes, tensor preprocessing against transformers' DPTImageProcessor, the loader
and estimator in-process on ComfyUI's real modules and through the real server, and bad inputs."""
import gc
import os
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core.depth.normalize import NORMALIZATIONS, normalize_depth, preview_image
from core.depth.preprocess import PreprocessConfig, preprocess, processed_size
from harness.comfy_server import assert_combo_refused, flagged_inputs
from harness.graph import Graph
from harness.tiny_depth import PICKLE_ONLY, PREPROCESSOR, TINY, TRUNCATED, WRONG_TYPE, write_depth_fixtures

LOADER = "UniCascadeDepthAnythingLoader"
ESTIMATOR = "UniCascadeDepthEstimator"
H, W = 48, 64


def smooth_frames(n: int, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """uint8 [n, h, w, 3] photo-like frames: low-frequency colour fields (no pixel noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, max(2, h // 8), max(2, w // 8), generator=g)
    x = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def reference_depth(folder: str, frames: np.ndarray) -> torch.Tensor:
    """Raw depth of uint8 frames [T, H, W, 3] computed with transformers alone: AutoImageProcessor on the frames
    as floats (0–255, as ComfyUI holds them), the model, post_process_depth_estimation to the frame size."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForDepthEstimation.from_pretrained(folder, dtype=torch.float32).eval()
    images = list(torch.from_numpy(frames).permute(0, 3, 1, 2).float())
    with torch.no_grad():
        outputs = model(**processor(images=images, return_tensors="pt"))
    sizes = [frames.shape[1:3]] * len(frames)
    return torch.stack([r["predicted_depth"] for r in processor.post_process_depth_estimation(outputs, sizes)])


# -- 1. normalisation modes ---------------------------------------------------------------------------------
def known_depth() -> torch.Tensor:
    """Three 2×3 frames with different ranges, and a constant one."""
    return torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
                         [[10.0, 10.0, 20.0], [30.0, 40.0, 50.0]],
                         [[0.5, 0.25, 0.75], [1.0, 0.0, 0.5]],
                         [[7.0, 7.0, 7.0], [7.0, 7.0, 7.0]]])


def test_raw_is_unchanged_and_not_modified_in_place():
    depth = known_depth()
    keep = depth.clone()
    out = normalize_depth(depth, "raw")
    assert torch.equal(out, keep) and torch.equal(depth, keep) and out.data_ptr() != depth.data_ptr()


def test_per_frame_spans_zero_to_one_in_every_frame():
    depth = known_depth()
    out = normalize_depth(depth, "per frame")
    d = depth.numpy().astype(np.float64)
    for i in range(3):
        want = (d[i] - d[i].min()) / (d[i].max() - d[i].min())
        np.testing.assert_allclose(out[i].numpy(), want, atol=1e-6)
        assert out[i].min() == 0 and out[i].max() == 1
    assert torch.equal(out[3], torch.zeros(2, 3))  # a constant frame → 0, no NaN


def test_per_sequence_uses_one_scale_for_all_frames():
    depth = known_depth()
    out = normalize_depth(depth, "per sequence").numpy().astype(np.float64)
    d = depth.numpy().astype(np.float64)
    np.testing.assert_allclose(out, (d - 0.0) / (50.0 - 0.0), atol=1e-6)
    assert out.min() == 0 and out.max() == 1
    # one affine map for every frame: differences across frames keep their ratios
    ratio_in = (d[1, 1, 2] - d[0, 0, 0]) / (d[2, 1, 0] - d[3, 0, 0])
    ratio_out = (out[1, 1, 2] - out[0, 0, 0]) / (out[2, 1, 0] - out[3, 0, 0])
    assert ratio_out == pytest.approx(ratio_in, rel=1e-5)
    assert out[0].max() < 1 and out[2].max() < 1  # frames below the sequence's maximum do not reach 1


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_invert(mode):
    depth = known_depth()
    plain, inverted = normalize_depth(depth, mode), normalize_depth(depth, mode, invert=True)
    if mode == "raw":  # mirrored within the sequence's range
        torch.testing.assert_close(inverted, depth.min() + depth.max() - depth)
    else:
        torch.testing.assert_close(inverted, 1 - plain)


def test_in_place_and_preview():
    depth = known_depth()
    out = normalize_depth(depth, "per sequence", inplace=True)
    assert out.data_ptr() == depth.data_ptr()
    view = preview_image(out, "per sequence")
    assert view.shape == (4, 2, 3, 3) and view.data_ptr() == out.data_ptr()  # no copy
    assert torch.equal(view[..., 0], out) and torch.equal(view[..., 2], out)
    raw = known_depth()
    shown = preview_image(raw, "raw")
    torch.testing.assert_close(shown[..., 1], raw / 50.0)
    assert torch.equal(raw, known_depth())


def test_normalization_errors():
    with pytest.raises(ValueError, match="not one of raw, per frame, per sequence"):
        normalize_depth(known_depth(), "per video")
    with pytest.raises(ValueError, match="non-empty"):
        normalize_depth(torch.zeros(0, 4, 4), "raw")


# -- 2. preprocessing against transformers' DPTImageProcessor -----------------------------------------------
SIZES = [(48, 64), (720, 1280), (37, 101), (56, 56), (20, 30), (300, 200)]
CONFIGS = {"tiny (56)": PREPROCESSOR, "V2 (518)": {**PREPROCESSOR, "size": {"height": 518, "width": 518}},
           "bilinear": {**PREPROCESSOR, "resample": 2}, "nearest": {**PREPROCESSOR, "resample": 0},
           "stretch": {**PREPROCESSOR, "keep_aspect_ratio": False},
           "padded": {**PREPROCESSOR, "do_pad": True, "size_divisor": 32}}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_preprocessing_equals_dpt_image_processor(name):
    """Same shape, and the same values within 1e-5 on float frames (ComfyUI's IMAGE). On 8-bit frames the
    processor rounds and clamps each resize pass to 8 bits: there the two agree within 2 grey levels."""
    from transformers import DPTImageProcessor

    values = CONFIGS[name]
    processor, config = DPTImageProcessor(**values), PreprocessConfig.from_dict(values)
    for i, (h, w) in enumerate(SIZES):
        frames = smooth_frames(3, h, w, seed=i)
        ours = preprocess(torch.from_numpy(frames).float() / 255, config)
        chw = torch.from_numpy(frames).permute(0, 3, 1, 2)
        theirs = processor(images=list(chw.float()), return_tensors="pt")["pixel_values"]
        assert ours.shape == theirs.shape, (name, h, w)
        assert tuple(ours.shape[2:]) == processed_size(h, w, config)
        assert (ours - theirs).abs().max() < 1e-5, (name, h, w)
        theirs_8bit = processor(images=list(chw), return_tensors="pt")["pixel_values"]
        grey_levels = (ours - theirs_8bit).abs().amax(dim=(0, 2, 3)) * torch.tensor(values["image_std"]) * 255
        assert grey_levels.max() <= 2.0, (name, h, w, grey_levels)


def test_processed_size_keeps_aspect_to_multiples_of_14():
    config = PreprocessConfig()  # Depth-Anything-V2: 518, multiple of 14, keep aspect ratio
    assert processed_size(720, 1280, config) == (518, 924)
    assert processed_size(1280, 720, config) == (924, 518)
    assert processed_size(518, 518, config) == (518, 518)
    assert all(s % 14 == 0 for s in processed_size(333, 777, config))


def test_preprocessor_config_errors(tmp_path):
    with pytest.raises(ValueError, match="resample 1 \\(lanczos\\) is not supported"):
        PreprocessConfig.from_dict({**PREPROCESSOR, "resample": 1})
    with pytest.raises(ValueError, match="not a DPTImageProcessor"):
        PreprocessConfig.from_dict({**PREPROCESSOR, "image_processor_type": "SiglipImageProcessor"})
    with pytest.raises(ValueError, match="image_mean needs 3 values"):
        PreprocessConfig.from_dict({**PREPROCESSOR, "image_mean": [0.5, 0.5]})
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="preprocessor_config.json is not valid JSON"):
        PreprocessConfig.from_folder(str(tmp_path))


# -- 3. in process, on ComfyUI's real modules ---------------------------------------------------------------
@pytest.fixture(scope="session")
def depth_models(comfy_base):
    """The fixture folders in the session server's models/depth_anything (conftest writes them; this returns
    their paths and writes any that are missing)."""
    return write_depth_fixtures(comfy_base)


@pytest.fixture(scope="session")
def depth_pack(pack, depth_models):
    import folder_paths

    folder_paths.add_model_folder_path("depth_anything", os.path.dirname(depth_models[TINY]))
    return pack("model_loaders.depth_anything"), pack("nodes.depth_estimator")


def test_estimator_in_process_equals_transformers(depth_pack, depth_models):
    loader, estimator = depth_pack
    frames = smooth_frames(7, seed=5)
    model = estimator.DepthAnythingLoader.execute(TINY, "auto").result[0]
    assert model.dtype == torch.float32  # auto on a CPU
    images = torch.from_numpy(frames).float() / 255
    want = reference_depth(depth_models[TINY], frames)
    for batch_size in (1, 3, 8):
        depth, preview = estimator.DepthEstimator.execute(model, images, "raw", False, batch_size).result
        assert depth.shape == (7, H, W) and depth.device.type == "cpu" and depth.dtype == torch.float32
        torch.testing.assert_close(depth, want, atol=1e-4, rtol=1e-4)
        assert preview.shape == (7, H, W, 3) and preview.min() == 0 and preview.max() == 1
    assert (want[0] - want[1]).abs().max() > 0.05 * want.abs().max()  # the tiny model tells frames apart


def test_model_is_managed_by_comfyui_and_reused(depth_pack):
    import comfy.model_management as mm

    loader, _ = depth_pack
    first = loader.load_depth_model(TINY, "fp32")
    assert loader.load_depth_model(TINY, "fp32") is first  # alive → not read again
    assert loader.load_depth_model(TINY, "bf16") is not first
    loader.estimate_depth(first, torch.rand(2, 32, 32, 3))
    assert any(m.model is first.patcher for m in mm.current_loaded_models)
    mm.unload_all_models()
    assert not any(m.model is first.patcher for m in mm.current_loaded_models)
    alive = weakref.ref(first)
    del first
    gc.collect()
    assert alive() is None  # the loader keeps no model alive outside ComfyUI's cache and memory manager


def test_default_batch_size_depends_on_the_device(depth_pack):
    """One frame at a time on a CPU (batches were slower there: docs/experiments.md, benchmarks/depth_throughput.py), 8
    on a GPU; with no batch_size given the model's load device decides."""
    loader, _ = depth_pack
    assert loader.default_batch_size(torch.device("cpu")) == loader.CPU_BATCH == 1
    for device in ("cuda", "cuda:1", "mps", "xpu"):
        assert loader.default_batch_size(device) == loader.GPU_BATCH == 8, device
    model = loader.load_depth_model(TINY, "fp32")
    assert model.patcher.load_device.type == "cpu"
    seen = []
    hook = model.patcher.model.net.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["pixel_values"].shape[0]), with_kwargs=True)
    try:
        frames = torch.rand(3, 32, 32, 3)
        loader.estimate_depth(model, frames)
        assert seen == [1, 1, 1]
        seen.clear()
        loader.estimate_depth(model, frames, 2)
        assert seen == [2, 1]
    finally:
        hook.remove()


def test_bad_frames_and_objects_in_process(depth_pack):
    loader, _ = depth_pack
    model = loader.load_depth_model(TINY, "fp32")
    cases = [(torch.zeros(0, 3, 0, 0), "the batch is empty"), (torch.rand(2, 16, 16, 4), "4 channels"),
             (torch.rand(16, 16, 3), "got shape \\(16, 16, 3\\)"), ([torch.rand(16, 16, 3)], "got list")]
    for frames, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            loader.estimate_depth(model, frames)
    with pytest.raises(TypeError, match="depth_model: expected the output of the UniCascade Depth Anything loader"):
        loader.estimate_depth("a string", torch.rand(1, 16, 16, 3))


@pytest.mark.parametrize("name, message", [
    (WRONG_TYPE, "config.json describes a 'siglip' model, not Depth Anything"),
    (TRUNCATED, "model.safetensors is truncated or corrupt"),
    (PICKLE_ONLY, "no .safetensors weights \\(found pytorch_model.bin\\); only safetensors are loaded"),
    ("missing", "no folder 'missing'"),
    ("../evil", "is not a folder name"),
])
def test_loader_refuses_bad_folders_in_process(depth_pack, name, message):
    loader, _ = depth_pack
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        loader.load_depth_model(name, "fp32")


# -- 4. through the real server -----------------------------------------------------------------------------
@pytest.fixture
def input_frames(comfy, depth_models):
    """Three different PNG frames in the server's input folder."""
    frames = smooth_frames(3, seed=11)
    names = []
    for i, frame in enumerate(frames):
        names.append(f"unicascade_depth_{i}.png")
        Image.fromarray(frame).save(os.path.join(comfy.base, "input", names[-1]))
    return names, frames


def video_of(g: Graph, names: list[str], repeats: int = 3):
    """LoadImage ×3 → ImageBatch → RepeatImageBatch: frames A, B, C, A, B, C, …"""
    loaded = [g.node("LoadImage", image=name) for name in names]
    batch = g.node("ImageBatch", image1=loaded[0][0], image2=loaded[1][0])
    batch = g.node("ImageBatch", image1=batch[0], image2=loaded[2][0])
    return g.node("RepeatImageBatch", image=batch[0], amount=repeats), loaded


def estimator(g: Graph, model, images, normalization="raw", invert=False, batch_size=4, node_id=None):
    return g.node(ESTIMATOR, node_id=node_id, depth_model=model, images=images, normalization=normalization,
                  invert=invert, batch_size=batch_size)


def saved_frames(comfy, entry, node: str) -> np.ndarray:
    images = entry["outputs"][node]["images"]
    return np.stack([np.asarray(Image.open(comfy.output_path(i["subfolder"], i["filename"])))
                     for i in images]).astype(np.float64)


@pytest.mark.server
def test_depth_through_the_server(comfy, depth_models, input_frames):
    names, frames = input_frames
    g = Graph()
    video, _ = video_of(g, names)
    model = g.node(LOADER, model_name=TINY, precision="auto")
    modes = {"raw": ("raw", False), "frame": ("per frame", False), "seq": ("per sequence", False),
             "seq_inv": ("per sequence", True)}
    for key, (mode, invert) in modes.items():
        depth = estimator(g, model[0], video[0], mode, invert, node_id=f"est_{key}")
        g.node("SaveImage", node_id=key, images=depth[1], filename_prefix=f"{comfy.prefix}_{key}")
    g.node("PreviewAny", node_id="any", source=["est_raw", 0])
    entry = comfy.run(g.prompt())
    out = {key: saved_frames(comfy, entry, key) for key in modes}
    for key, pngs in out.items():
        assert pngs.shape == (9, H, W, 3), key  # frame count and size of the input
        assert np.array_equal(pngs[..., 0], pngs[..., 2])
    # in-process recomputation with transformers alone on the same 9 frames (SaveImage truncates to 8 bits)
    raw = reference_depth(depth_models[TINY], np.concatenate([frames] * 3)).double().numpy()
    seq = (raw - raw.min()) / (raw.max() - raw.min())
    lo, hi = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
    per_frame = (raw - lo) / (hi - lo)
    assert np.abs(out["seq"][..., 0] - 255 * seq).max() <= 1.01
    assert np.abs(out["frame"][..., 0] - 255 * per_frame).max() <= 1.01
    assert np.array_equal(out["raw"], out["seq"])  # raw preview = one min-max over the sequence
    assert np.abs(out["seq_inv"] + out["seq"] - 255).max() <= 1
    for i in range(9):  # per frame: every frame spans 0–255; per sequence: one scale, so not every frame does
        assert out["frame"][i].min() == 0 and out["frame"][i].max() == 255
    assert out["seq"].min() == 0 and out["seq"].max() == 255
    assert sum(out["seq"][i].max() < 255 or out["seq"][i].min() > 0 for i in range(9)) >= 3
    assert np.abs(out["frame"] - out["seq"]).max() > 10
    assert np.array_equal(out["seq"][0], out["seq"][3]) and np.abs(out["seq"][0] - out["seq"][1]).max() > 10
    assert entry["outputs"]["any"]["text"][0].startswith("tensor(")


@pytest.mark.server
def test_loader_is_not_read_again_for_repeat_requests(comfy, depth_models, input_frames):
    names, _ = input_frames
    needle = f"loading Depth Anything from {depth_models[TINY]} (float32)"

    def run(batch_size, normalization):
        g = Graph()
        video, _ = video_of(g, names, repeats=1)
        model = g.node(LOADER, model_name=TINY, precision="fp32")
        twin = g.node(LOADER, model_name=TINY, precision="fp32")
        for i, m in enumerate((model, twin)):
            depth = estimator(g, m[0], video[0], normalization, batch_size=batch_size)
            g.node("SaveImage", images=depth[1], filename_prefix=f"{comfy.prefix}_{i}")
        comfy.run(g.prompt())
        return comfy.log_text().count(needle)

    first = run(2, "raw")
    assert first >= 1
    assert run(3, "per frame") == first
    assert run(1, "per sequence") == first


def empty_video(path: str) -> None:
    """A NUT file with an empty video stream beside a short audio track: core's GetVideoComponents makes a
    [0, 3, 0, 0] IMAGE batch of it (without the audio, the container cannot seek and core fails first)."""
    import av

    with av.open(path, mode="w") as container:
        video = container.add_stream("ffv1", rate=8)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=8000)
        audio.layout = "mono"
        container.start_encoding()
        for i in range(2):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)


@pytest.mark.server
def test_bad_inputs_fail_clearly_and_the_server_goes_on(comfy, depth_models, input_frames):
    names, _ = input_frames
    empty_video(os.path.join(comfy.base, "input", "unicascade_empty.nut"))

    def failing(message, model_name=TINY, images=None, depth_model=None):
        g = Graph()
        if images is None:
            images = video_of(g, names, repeats=1)[0][0]
        elif callable(images):
            images = images(g)
        if depth_model is None:
            depth_model = g.node(LOADER, model_name=model_name, precision="auto")[0]
        depth = estimator(g, depth_model, images)
        g.node("SaveImage", images=depth[1], filename_prefix=comfy.prefix)
        error = comfy.run_expecting_error(g.prompt())
        assert message in error["exception_message"], error["exception_message"]

    failing("config.json describes a 'siglip' model, not Depth Anything", model_name=WRONG_TYPE)
    failing(f"{TRUNCATED}/model.safetensors is truncated or corrupt", model_name=TRUNCATED)
    failing("no .safetensors weights (found pytorch_model.bin)", model_name=PICKLE_ONLY)
    failing("images: the batch is empty (0 frames)",
            images=lambda g: g.node("GetVideoComponents",
                                    video=g.node("LoadVideo", file="unicascade_empty.nut")[0])[0])
    # RGBA frames are not refused: the alpha channel is dropped with a log line (tests/test_rgba_inputs.py)
    failing("depth_model: expected the output of the UniCascade Depth Anything loader, got str",
            depth_model="not a model")

    def bad_graph(bad):
        g = Graph()
        video, _ = video_of(g, names, repeats=1)
        model = g.node(LOADER, **{"model_name": TINY, "precision": "auto", **bad})
        depth = g.node(ESTIMATOR, depth_model=model[0], images=video[0], invert=False, batch_size=4,
                       normalization=bad.get("normalization", "raw"))
        g.node("SaveImage", images=depth[1], filename_prefix=comfy.prefix)
        return g.prompt()

    for bad, node in (({"normalization": "per video"}, ESTIMATOR), ({"model_name": "no-such-folder"}, LOADER)):
        body = comfy.validate_error(bad_graph(bad))
        key, value = next(iter(bad.items()))
        assert f"{key}: {value!r} is not one of" in str(body), body
        assert flagged_inputs(body) == {node: [key]}, body
    assert_combo_refused(comfy, bad_graph({"precision": "fp8"}), LOADER, "precision", "fp8",
                         "precision: 'fp8' is not one of auto, fp32, fp16, bf16")

    g = Graph()  # and the server still serves
    video, _ = video_of(g, names, repeats=1)
    depth = estimator(g, g.node(LOADER, model_name=TINY, precision="auto")[0], video[0], "per sequence")
    g.node("SaveImage", node_id="ok", images=depth[1], filename_prefix=comfy.prefix)
    assert len(comfy.run(g.prompt())["outputs"]["ok"]["images"]) == 3


@pytest.mark.server
def test_batch_size_default_is_the_devices(comfy):
    """The server runs on the CPU (--cpu): the widget's default is the CPU's, and its tooltip says so."""
    batch = comfy.object_info()[ESTIMATOR]["input"]["required"]["batch_size"][1]
    assert batch["default"] == 1 and batch["min"] == 1
    assert batch["tooltip"].startswith("Frames per micro-batch. Default 1 on this device (8 on a GPU")


@pytest.mark.server
def test_nodes_listed_with_the_fixture_folders(comfy, depth_models):
    info = comfy.object_info()
    loader, est = info[LOADER], info[ESTIMATOR]
    assert loader["category"] == "UniCascade/loaders" and est["category"] == "UniCascade/conditioning"
    listed = loader["input"]["required"]["model_name"][1]["options"]
    assert {TINY, WRONG_TYPE, TRUNCATED, PICKLE_ONLY} <= set(listed)
    assert est["output"] == ["UNICASCADE_DEPTH", "IMAGE"]
    assert est["input"]["required"]["normalization"][1]["options"] == list(NORMALIZATIONS)
