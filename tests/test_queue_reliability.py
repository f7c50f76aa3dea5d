"""Batch queueing against the real server: 20 prompts, interruption, bad prompts; the queue always carries on."""
import json
import os
import statistics
import time

import psutil
import pytest
import torch

from conftest import load_latent
from harness.wan_graphs import wan_t2v_graph

pytestmark = pytest.mark.server

TEXTS = ["a red cat runs", "ocean waves at night", "snow on a mountain"]


def model_loads(comfy) -> int:
    return comfy.log_text().count("model weight dtype")


def test_twenty_prompts_distinct_seeds_repeats_one_model_load_bounded_memory(comfy):
    process = psutil.Process(comfy.proc.pid)
    # prime: first prompt loads the model
    first = wan_t2v_graph(f"{comfy.prefix}_00", seed=0, positive=TEXTS[0], steps=2, tma={
        "lambda_txt": 0.3, "lambda_img": 0.3, "schedule": "cosine", "txt_window_end": 0.4, "img_window_start": 0.6,
        "progress": "global (from sigma)"})
    comfy.run(first)
    rss_first = process.memory_info().rss
    loads_before = model_loads(comfy)
    ids = []
    for i in range(1, 20):
        prompt = json.loads(json.dumps(first))
        seed, text = i % 10, TEXTS[(i % 10) % 3]
        for node in prompt.values():
            if node["class_type"] == "KSampler":
                node["inputs"]["seed"] = seed
            if node["class_type"] == "CLIPTextEncode" and node["inputs"]["text"] == TEXTS[0]:
                node["inputs"]["text"] = text
            if node["class_type"] == "SaveLatent":
                node["inputs"]["filename_prefix"] = f"{comfy.prefix}_{i:02d}"
        ids.append(comfy.queue(prompt))  # all queued before any finishes
    for prompt_id in ids:
        entry = comfy.wait(prompt_id)
        assert entry["status"]["status_str"] == "success", entry["status"]
    rss_last = process.memory_info().rss
    assert model_loads(comfy) == loads_before, "the diffusion model was loaded again during the batch"
    latents = [load_latent(comfy, f"{comfy.prefix}_{i:02d}") for i in range(20)]
    for i in range(20):
        for j in range(i + 1, 20):
            same = (i % 10) == (j % 10)
            assert torch.equal(latents[i], latents[j]) == same, (i, j)
    assert abs(rss_last - rss_first) <= 0.10 * rss_first, (rss_first, rss_last)


def test_interrupt_stops_within_a_step_and_the_next_prompt_runs(comfy):
    ws = comfy._websocket()
    long_prompt = wan_t2v_graph(f"{comfy.prefix}_long", steps=400, width=64, height=64, length=5)
    prompt_id = comfy.queue(long_prompt)
    progress_times, interrupted_at, stopped_at, after_interrupt = [], None, None, 0
    deadline = time.time() + 300
    while time.time() < deadline:
        ws.settimeout(30)
        message = ws.recv()
        if not isinstance(message, str):
            continue
        event = json.loads(message)
        data = event.get("data", {})
        if data.get("prompt_id") != prompt_id:
            continue
        if event["type"] == "progress":
            progress_times.append(time.time())
            if interrupted_at is not None:
                after_interrupt += 1
            elif data["value"] >= 5:
                status, _ = comfy.post("/interrupt", {})
                assert status == 200
                interrupted_at = time.time()
        if event["type"] in ("execution_interrupted", "execution_error", "execution_success"):
            assert event["type"] == "execution_interrupted", event
            stopped_at = time.time()
            break
    assert interrupted_at and stopped_at
    step = statistics.median(b - a for a, b in zip(progress_times, progress_times[1:]))
    assert after_interrupt <= 1, "sampling went on for more than one step after the interrupt"
    assert stopped_at - interrupted_at <= 2 * step + 0.5, (stopped_at - interrupted_at, step)
    entry = comfy.history(prompt_id)
    assert entry["status"]["status_str"] == "error"
    assert comfy.run(wan_t2v_graph(f"{comfy.prefix}_next", steps=2))["status"]["status_str"] == "success"


def test_bad_prompts_fail_clearly_and_the_queue_carries_on(comfy):
    # a model file that does not exist: refused at validation, naming the input and the value
    missing = wan_t2v_graph(comfy.prefix, unet="no_such_model.safetensors")
    body = comfy.validate_error(missing)
    text = json.dumps(body)
    assert "value_not_in_list" in text and "unet_name" in text and "no_such_model.safetensors" in text
    # a wrong type on a link (CLIP into a MODEL input): refused at validation
    wrong = wan_t2v_graph(comfy.prefix)
    sampler = next(k for k, v in wrong.items() if v["class_type"] == "KSampler")
    clip = next(k for k, v in wrong.items() if v["class_type"].endswith("TinyTextEncoderLoader"))
    wrong[sampler]["inputs"]["model"] = [clip, 0]
    assert "return_type_mismatch" in json.dumps(comfy.validate_error(wrong))
    # a corrupt model file: fails at execution with a message in the history
    corrupt = os.path.join(comfy.base, "models", "diffusion_models", "corrupt_wan.safetensors")
    with open(corrupt, "wb") as f:
        f.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json" + os.urandom(256))
    error = comfy.run_expecting_error(wan_t2v_graph(comfy.prefix, unet="corrupt_wan.safetensors"))
    assert error["node_type"] == "UNETLoader" and error["exception_message"]
    # the queue carries on
    assert comfy.run(wan_t2v_graph(f"{comfy.prefix}_ok", steps=2))["status"]["status_str"] == "success"
