"""Pyramid Reflection through the real ComfyUI server and frontend: a real video (LoadVideo) → QA with the tiny
SigLIP2/Qwen2.5-VL/Qwen2 folders → answer, trace and keyframes; the embedding and caption caches across queued
prompts; bad inputs refused or failing clearly while the server keeps serving; the answer and trace in the
node's text panel in chromium."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from harness.comfy_server import assert_combo_refused, flagged_inputs
from harness.graph import Graph
from harness.tiny_reflection import EMPTY_VIDEO, SIGLIP, SIGLIP_WRONG_TYPE, SMOLLM_GGUF, TEXT_LLM, VIDEO, VLM
from harness.workflows import WORKFLOW_DIR, cpu_widget_settings, for_tiny_models, load

pytestmark = pytest.mark.server

QA = "UniCascadePyramidReflectionQA"
SIGLIP_LOADER = "UniCascadeSigLIPLoader"
LOCAL = "UniCascadeLocalLLMLoader"
HTTP = "UniCascadeOpenAICompatibleLLM"
DEFAULTS = dict(question_type="auto (LLM router)", pool_size=64, caption_frames=16, static_sizes="4, 8, 16",
                dynamic_sizes="64, 32, 16", mmr_lambda=0.5, accept_threshold=0.7, max_rounds=3, max_new_tokens=16,
                image_max_side=448, embed_batch=64)


def qa(g, question, frames=None, video=VIDEO, vlm=VLM, llm=TEXT_LLM, siglip=SIGLIP, precision="auto", **widgets):
    inputs = dict(siglip=g.node(SIGLIP_LOADER, model_name=siglip, precision=precision)[0],
                  vlm=g.node(LOCAL, model_name=vlm, precision="auto")[0], question=question,
                  **{**DEFAULTS, **widgets})
    if llm:
        inputs["llm"] = g.node(LOCAL, model_name=llm, precision="auto")[0]
    if frames is not None:
        inputs["images"] = frames
    elif video is not None:
        inputs["video"] = g.node("LoadVideo", file=video)[0]
    node = g.node(QA, node_id="qa", **inputs)
    g.node("SaveImage", node_id="keys", images=node[2], filename_prefix="reflection_keys")
    return node


def trace_of(entry):
    text = entry["outputs"]["qa"]["text"]
    assert text[0].startswith("Answer: ") and text[3] == "Trace:"
    return json.loads(text[-1])


def decoded_frames(comfy, indices):
    """The fixture video's frames at ``indices`` as the host's own VIDEO reader decodes them (what LoadVideo hands
    the node), as uint8 RGB. Hosts differ: 0.3.75 converts to rgb24, 0.33 to float RGB (a different rounding)."""
    from comfy_api.latest import InputImpl

    images = InputImpl.VideoFromFile(os.path.join(comfy.base, "input", VIDEO)).get_components().images
    return {i: (images[i].clamp(0, 1) * 255).round().to(torch.uint8).numpy().astype(int) for i in indices}


def test_nodes_listed(comfy):
    info = comfy.object_info()
    for name in (QA, SIGLIP_LOADER, LOCAL, HTTP):
        assert info[name]["category"].startswith("UniCascade/"), name
    assert info[QA]["output"] == ["STRING", "STRING", "IMAGE"] and info[QA]["output_node"]
    assert info[QA]["output_name"] == ["answer", "trace", "keyframes"]
    assert SIGLIP in info[SIGLIP_LOADER]["input"]["required"]["model_name"][1]["options"]
    assert {VLM, TEXT_LLM, SMOLLM_GGUF} <= set(info[LOCAL]["input"]["required"]["model_name"][1]["options"])
    assert info[HTTP]["input"]["required"]["api_key_env"][1]["default"] == ""


def test_video_qa_and_caches_across_prompts(comfy, comfy_in_process):
    g = Graph()
    qa(g, "How many bikes pass by?", pool_size=48, dynamic_sizes="48, 24, 12")  # a pool no other test embeds
    entry = comfy.run(g.prompt())
    trace = trace_of(entry)
    assert trace["video"]["frames"] == 250 and len(trace["video"]["pool_frames"]) == 48
    assert trace["cost"]["image_embeddings_computed"] == 48 and trace["cost"]["embedding_cache"] == "miss"
    assert trace["cost"]["llm_calls"]["note"] == 16 and trace["caption_from"] != "cache"
    assert [len(r["frames"]) for r in trace["rounds"]] == [48, 24, 12]  # the random text model never accepts
    assert trace["mode"] == "dynamic" and trace["mode_source"] == "keywords (router reply unreadable)"
    # the keyframes output: the final frames of the video, in temporal order, at full size
    keys = trace["final"]["keyframes"]
    assert keys == sorted(keys)
    images = entry["outputs"]["keys"]["images"]
    assert len(images) == len(keys)
    far = (keys[0] + 125) % 250                                   # a frame of another part of the video
    video = decoded_frames(comfy, [*keys, far])
    for image, index in zip(images, keys):
        saved = np.asarray(Image.open(comfy.output_path(image["subfolder"], image["filename"]))).astype(int)
        assert saved.shape == (272, 640, 3)
        assert np.abs(saved - video[index]).max() <= 1, index
    assert np.abs(video[far] - video[keys[0]]).max() > 10   # another frame differs: the comparison can fail
    assert entry["outputs"]["qa"]["text"][0] == f"Answer: {trace['final']['answer']}"

    # another question about the same video, another queued prompt: nothing embedded or captioned again
    g = Graph()
    qa(g, "What colour is the first bike?", question_type="static (expand)", pool_size=48)
    again = trace_of(comfy.run(g.prompt()))
    assert again["cost"]["image_embeddings_computed"] == 0 and again["cost"]["embedding_cache"] == "hit"
    assert again["caption_from"] == "cache" and "note" not in again["cost"]["llm_calls"]
    assert again["global_caption"] == trace["global_caption"]
    assert [len(r["frames"]) for r in again["rounds"]] == [4, 8, 16]


def test_each_refusal_marks_only_its_input(comfy):
    """ComfyUI marks every input a node's validate_inputs takes with its error: an empty question must mark the
    question alone, a key pasted as api_key_env that input alone, a missing model its model_name alone."""
    g = Graph()
    qa(g, "   ")
    body = comfy.validate_error(g.prompt())
    assert flagged_inputs(body) == {QA: ["question"]}, body
    assert "question is empty: type what you want to know about the video" in json.dumps(body)

    pasted = "sk-live-" + "7f3a" * 6
    g = Graph()
    qa(g, "What is shown?", llm=None)
    g.nodes["qa"]["inputs"]["llm"] = g.node(HTTP, base_url="http://127.0.0.1:9/v1", model="", api_key_env=pasted,
                                            vision=False, timeout=30.0, retries=0, backoff=0.0, temperature=0.0)[0]
    body = comfy.validate_error(g.prompt())
    assert flagged_inputs(body) == {HTTP: ["api_key_env"]}, body
    assert "put the NAME of the variable here" in json.dumps(body)
    assert pasted not in json.dumps(body) and pasted not in comfy.log_text()  # refused without echoing it

    for kw, loader in ((dict(siglip="no-such-siglip"), SIGLIP_LOADER), (dict(vlm="no-such-vlm"), LOCAL)):
        g = Graph()
        qa(g, "What is shown?", **kw)
        body = comfy.validate_error(g.prompt())
        assert flagged_inputs(body) == {loader: ["model_name"]}, body
        assert f"model_name: {next(iter(kw.values()))!r} is not one of" in json.dumps(body)


def test_bad_inputs_fail_clearly_and_the_server_goes_on(comfy, comfy_in_process):
    def failing(message, node=QA, **kw):
        g = Graph()
        qa(g, "What is shown?", **kw)
        error = comfy.run_expecting_error(g.prompt())
        assert message in error["exception_message"], error["exception_message"]
        assert error["node_type"] == node and error["exception_type"] == "ValueError", error

    # checked when the node runs (validate_inputs takes one input), a ValueError naming the input
    failing("static_sizes: the expand schedule must not decrease", static_sizes="8, 4")
    failing("dynamic_sizes: 'a, b' is not a comma-separated list", dynamic_sizes="a, b")
    for name, value, node, message in (("question_type", "both", QA, "question_type: 'both' is not one of"),
                                       ("precision", "fp8", SIGLIP_LOADER, "precision: 'fp8' is not one of auto")):
        g = Graph()
        qa(g, "What is shown?", **{name: value})
        assert_combo_refused(comfy, g.prompt(), node, name, value, message)
    failing("the video has no frames", video=EMPTY_VIDEO)  # core's reader fails on it; its video stream is empty
    failing("connect either images (an IMAGE batch) or video (a VIDEO)", video=None)
    failing("does not take images; the Actor and the frame notes need a vision-language model", vlm=TEXT_LLM)
    failing("describes a 'clip' model, not SigLIP2", node=SIGLIP_LOADER, siglip=SIGLIP_WRONG_TYPE)

    # a one-frame "video" (an image) works: every round sees that frame
    frame = decoded_frames(comfy, [40])[40].astype(np.uint8)
    Image.fromarray(frame).save(os.path.join(comfy.base, "input", "reflection_one_frame.png"))
    g = Graph()
    frame = g.node("LoadImage", image="reflection_one_frame.png")
    qa(g, "What is shown?", frames=frame[0], question_type="static (expand)")
    entry = comfy.run(g.prompt())
    trace = trace_of(entry)
    assert [r["frames"] for r in trace["rounds"]] == [[0], [0], [0]] and trace["video"]["frames"] == 1
    assert len(entry["outputs"]["keys"]["images"]) == 1


def test_answer_and_trace_in_the_text_panel(comfy, comfy_page):
    """The shared workflow in the real frontend: run it and read the QA node's read-only panel."""
    workflow = for_tiny_models(load(os.path.join(WORKFLOW_DIR, "pyramid_reflection_qa.json")))
    page = comfy_page
    page.load_workflow(workflow)
    for node_id, name, value in cpu_widget_settings(workflow):
        page.set_widget(node_id, name, value)
    node = next(n["id"] for n in workflow["nodes"] if n["type"] == QA)
    page.set_widget(node, "question", "Where does the cyclist ride? (panel test)")
    entry = page.run_and_wait()
    assert entry["status"]["status_str"] == "success", entry["status"]
    page.page.wait_for_function(f"() => window.app.graph.getNodeById({node}).unicascadeText")
    panel = page.page.locator(f'textarea[data-unicascade-node="{node}"]')
    text = panel.input_value()
    lines = text.splitlines()
    assert lines[0].startswith("Answer: ") and lines[1].startswith("Source: ") and "Trace:" in lines
    trace = json.loads(text.split("Trace:\n", 1)[1])
    assert trace["question"] == "Where does the cyclist ride? (panel test)" and trace["rounds"]
    assert panel.get_attribute("readonly") is not None
    page.screenshot("reflection_text_panel")
    values = page.page.evaluate(f"() => window.app.graph.getNodeById({node}).serialize().widgets_values")
    assert not any(isinstance(v, str) and v.startswith("Answer: ") for v in values)  # the panel is not saved
    assert page.pack_errors() == []
