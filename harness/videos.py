"""Video files for the VIDEO-input tests, written at test time with PyAV (which ComfyUI ships).

``write_ac3_avi`` makes what Debian opencv-doc's ``Megamind.avi`` is (docs/design.md §12): an AVI with an MPEG-4 video
stream and an AC3 audio stream whose first chunk starts inside an AC3 frame (Megamind's first audio chunk is
729 bytes, the others 768 = one AC3 frame at 192 kb/s). Every video frame decodes; ComfyUI 0.3.75's
get_components() also decodes the audio and fails at that first chunk ("Invalid data found when processing input").
"""
from __future__ import annotations

import io

import numpy as np

AC3_FRAME_BYTES = 768   # one AC3 frame at 192 kb/s, 48 kHz
MEGAMIND_SKIP = 39      # Megamind.avi's first audio chunk: 768 − 39 = 729 bytes


def moving_bar_frames(count: int, width: int, height: int) -> np.ndarray:
    """uint8 [count, height, width, 3]: a green bar moving right over a background that brightens."""
    frames = np.zeros((count, height, width, 3), np.uint8)
    for i in range(count):
        frames[i, ..., 0] = 20 + i * 200 // max(1, count - 1)
        frames[i, :, (i * 4) % width:(i * 4) % width + 8, 1] = 255
    return frames


def write_ac3_avi(path: str, frames: int = 12, width: int = 64, height: int = 48, rate: int = 8,
                  skip: int = MEGAMIND_SKIP) -> str:
    """MPEG-4 video + AC3 audio (a 440 Hz tone) in an AVI whose audio bytes start ``skip`` bytes into an AC3
    frame, chunked like Megamind.avi's."""
    import av

    clean = io.BytesIO()
    with av.open(clean, mode="w", format="avi") as container:  # a well-formed AVI first
        video = container.add_stream("mpeg4", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("ac3", rate=48000)
        audio.layout = "stereo"
        for image in moving_bar_frames(frames, width, height):
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        samples = 48000 * frames // rate
        tone = np.sin(2 * np.pi * 440 * np.arange(samples) / 48000).astype(np.float32)
        for start in range(0, samples, 1536):
            chunk = np.pad(tone[start:start + 1536], (0, max(0, start + 1536 - samples)))
            frame = av.AudioFrame.from_ndarray(np.stack([chunk, chunk]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, start
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    clean.seek(0)
    with av.open(clean) as src, av.open(path, mode="w", format="avi") as dst:
        video_in, audio_in = src.streams.video[0], src.streams.audio[0]
        video_out = dst.add_stream_from_template(video_in)
        audio_out = dst.add_stream_from_template(audio_in)
        ac3 = bytearray()
        for packet in src.demux():
            if packet.size == 0:
                continue
            if packet.stream is video_in:
                packet.stream = video_out
                dst.mux(packet)
            else:
                ac3 += bytes(packet)
        ac3 = ac3[skip:]
        for start in range(0, len(ac3), AC3_FRAME_BYTES):
            packet = av.Packet(bytes(ac3[start:start + AC3_FRAME_BYTES]))
            packet.stream, packet.time_base = audio_out, audio_out.time_base
            dst.mux(packet)
    return path


def write_garbage_video(path: str) -> str:
    """Not a video at all: a RIFF tag and bytes no demuxer reads."""
    with open(path, "wb") as f:
        f.write(b"RIFF" + bytes(range(256)) * 8)
    return path


def decode_video_stream_here(path: str) -> np.ndarray:
    """uint8 [T, H, W, 3]: every frame of the file's first video stream, decoded by PyAV directly (the reference
    the tests compare against)."""
    import av

    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])
