"""Reading a core VIDEO input (nodes/video.py, core/video.py): ComfyUI's get_components() first, the file's video
stream alone when that fails. The case: an AVI with MPEG-4 video and AC3 audio whose first audio chunk starts
inside an AC3 frame (as Debian opencv-doc's Megamind.avi), written at test time; core's reader fails on it, the
pack decodes it; a file that is no video fails with "could not decode". In process on ComfyUI's real VideoFromFile
and through the real server (LoadVideo → Pyramid Reflection QA)."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from core.video import decode_video_stream
from harness.graph import Graph
from harness.tiny_reflection import SIGLIP, TEXT_LLM, VLM
from harness.videos import decode_video_stream_here, moving_bar_frames, write_ac3_avi, write_garbage_video

AC3_AVI = "unicascade_mpeg4_ac3.avi"
GARBAGE = "unicascade_not_a_video.avi"
FRAMES, WIDTH, HEIGHT, RATE = 12, 64, 48, 8


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {"ac3": write_ac3_avi(str(folder / AC3_AVI), FRAMES, WIDTH, HEIGHT, RATE),
            "garbage": write_garbage_video(str(folder / GARBAGE))}


def video_from_file(path):
    from comfy_api.latest._input_impl.video_types import VideoFromFile

    return VideoFromFile(path)


# -- in process ---------------------------------------------------------------------------------------------
def test_core_reader_fails_on_the_ac3_avi_whose_video_stream_decodes(comfy_in_process, files):
    """The reproduction: ComfyUI's own reader (what GetVideoComponents calls) gives up on the audio."""
    import av

    with pytest.raises(av.InvalidDataError):
        video_from_file(files["ac3"]).get_components()
    frames = decode_video_stream_here(files["ac3"])
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    drawn = moving_bar_frames(FRAMES, WIDTH, HEIGHT).astype(int)
    assert np.abs(frames.astype(int) - drawn).mean() < 4  # MPEG-4 at its default quality: close to what was drawn
    with av.open(files["ac3"]) as container:
        assert [s.codec_context.name for s in container.streams] == ["mpeg4", "ac3"]


def test_decode_video_stream(files, tmp_path):
    decoded = decode_video_stream(files["ac3"])
    want = torch.from_numpy(decode_video_stream_here(files["ac3"])).float() / 255
    assert decoded.frames.dtype == torch.float32 and torch.equal(decoded.frames, want)
    assert decoded.frame_rate == RATE and decoded.skipped_packets == 0
    trimmed = decode_video_stream(files["ac3"], start_time=0.5, duration=0.5)  # frames 4–7 at 8 fps
    assert torch.equal(trimmed.frames, want[4:8])
    assert torch.equal(decode_video_stream(files["ac3"], start_time=1.0).frames, want[8:])
    with pytest.raises(ValueError, match="PyAV cannot open it"):
        decode_video_stream(files["garbage"])

    # damaged packets are skipped and counted; a stream of nothing but damaged packets does not decode
    import av

    def mjpeg(path, damaged):
        with av.open(path, mode="w") as container:
            stream = container.add_stream("mjpeg", rate=8)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
            packets = []
            for i in range(6):
                image = np.full((32, 32, 3), 30 * i, np.uint8)
                packets += stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24"))
            packets += stream.encode()
            for i, packet in enumerate(packets):
                if i in damaged:
                    bad = av.Packet(b"\xff\xd8 not a jpeg" + bytes(40))
                    bad.stream, bad.pts, bad.dts, bad.time_base = stream, packet.pts, packet.dts, packet.time_base
                    packet = bad
                container.mux(packet)
        return path

    one = decode_video_stream(mjpeg(str(tmp_path / "one.mkv"), {3}))
    assert one.frames.shape[0] == 5 and one.skipped_packets == 1
    assert [round(float(f.mean()) * 255 / 30) for f in one.frames] == [0, 1, 2, 4, 5]
    with pytest.raises(ValueError, match="none of its video packets decodes \\(6 refused"):
        decode_video_stream(mjpeg(str(tmp_path / "all.mkv"), set(range(6))))


def test_video_frames_helper_on_real_video_inputs(pack, files, tmp_path, caplog):
    from comfy_api.latest._input_impl.video_types import VideoFromComponents
    from comfy_api.latest._util import VideoComponents

    video_frames = pack("nodes.video").video_frames
    want = torch.from_numpy(decode_video_stream_here(files["ac3"])).float() / 255
    with caplog.at_level(logging.WARNING):
        frames, fps = video_frames(video_from_file(files["ac3"]), "video", "Test Node")
    assert torch.equal(frames, want) and fps == RATE
    assert (f"UniCascade: Test Node: video: ComfyUI could not read {AC3_AVI} (InvalidDataError: "
            in caplog.text)
    assert f"decoded its video stream alone instead: {FRAMES} frames at 8 fps, audio left out" in caplog.text

    # what core reads is taken as it is, without a log line
    plain = str(tmp_path / "plain.avi")
    import av
    with av.open(plain, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for image in moving_bar_frames(5, WIDTH, HEIGHT):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        frames, fps = video_frames(video_from_file(plain), "video", "Test Node")
    assert torch.equal(frames, video_from_file(plain).get_components().images) and fps == RATE
    assert "UniCascade" not in caplog.text
    images = torch.rand(3, 8, 8, 3)
    frames, fps = video_frames(VideoFromComponents(VideoComponents(images=images, audio=None, frame_rate=24)),
                               "video", "Test Node")
    assert frames is images and fps == 24

    with pytest.raises(ValueError, match=f"video: could not decode {GARBAGE}: ComfyUI's reader failed "
                                         "\\(InvalidDataError: .*\\) and so did decoding its video stream alone "
                                         "\\(PyAV cannot open it"):
        video_frames(video_from_file(files["garbage"]), "video", "Test Node")


# -- through the server -------------------------------------------------------------------------------------
QA = "UniCascadePyramidReflectionQA"
CHEAP = dict(question_type="static (expand)", pool_size=8, caption_frames=1, static_sizes="2",
             dynamic_sizes="8, 4", mmr_lambda=0.5, accept_threshold=0.7, max_rounds=1, max_new_tokens=8,
             image_max_side=448, embed_batch=8)


@pytest.fixture
def server_files(comfy, files):
    import shutil

    for name in (AC3_AVI, GARBAGE):
        shutil.copy(os.path.join(os.path.dirname(files["ac3"]), name), os.path.join(comfy.base, "input", name))
    return comfy


def qa_on_video(g: Graph, file: str):
    video = g.node("LoadVideo", file=file)
    node = g.node(QA, node_id="qa", question="What moves?", video=video[0],
                  siglip=g.node("UniCascadeSigLIPLoader", model_name=SIGLIP, precision="auto")[0],
                  vlm=g.node("UniCascadeLocalLLMLoader", model_name=VLM, precision="auto")[0],
                  llm=g.node("UniCascadeLocalLLMLoader", model_name=TEXT_LLM, precision="auto")[0], **CHEAP)
    g.node("SaveImage", node_id="keys", images=node[2], filename_prefix="unicascade_video_input_keys")
    return node


@pytest.mark.server
def test_core_get_video_components_fails_on_the_ac3_avi(server_files):
    comfy = server_files
    g = Graph()
    parts = g.node("GetVideoComponents", video=g.node("LoadVideo", file=AC3_AVI)[0])
    g.node("PreviewImage", images=parts[0])
    error = comfy.run_expecting_error(g.prompt())
    assert error["node_type"] == "GetVideoComponents"
    assert "Invalid data found when processing input" in error["exception_message"]


@pytest.mark.server
def test_qa_decodes_the_video_stream_of_the_ac3_avi(server_files):
    comfy = server_files
    needle = f"UniCascade: Pyramid Reflection QA: video: ComfyUI could not read {AC3_AVI}"
    before = comfy.log_text().count(needle)
    g = Graph()
    qa_on_video(g, AC3_AVI)
    entry = comfy.run(g.prompt())
    trace = json.loads(entry["outputs"]["qa"]["text"][-1])
    assert trace["video"]["frames"] == FRAMES and trace["video"]["fps"] == RATE
    video = decode_video_stream_here(os.path.join(comfy.base, "input", AC3_AVI))
    keys = trace["final"]["keyframes"]
    saved = entry["outputs"]["keys"]["images"]
    assert keys and len(saved) == len(keys)
    for image, index in zip(saved, keys):
        pixels = np.asarray(Image.open(comfy.output_path(image["subfolder"], image["filename"]))).astype(int)
        assert pixels.shape == (HEIGHT, WIDTH, 3) and np.abs(pixels - video[index]).max() <= 1, index
    assert comfy.log_text().count(needle) == before + 1


@pytest.mark.server
def test_qa_says_could_not_decode_for_a_file_that_is_no_video(server_files):
    comfy = server_files
    g = Graph()
    qa_on_video(g, GARBAGE)
    error = comfy.run_expecting_error(g.prompt())
    assert error["node_type"] == QA
    assert f"video: could not decode {GARBAGE}" in error["exception_message"], error["exception_message"]
    assert "is the file damaged, or not a video?" in error["exception_message"]
