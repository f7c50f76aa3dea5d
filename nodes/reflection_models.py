"""Loader nodes of Pyramid Reflection (UniVid §2.4): SigLIP2 for keyframe retrieval, a local LLM / VLM, and an
OpenAI-compatible endpoint (the loading code is model_loaders/siglip.py and model_loaders/llm.py). The endpoint's
API key is read from an environment variable at each call: its name is a widget, the key itself never is."""
from __future__ import annotations

from comfy_api.latest import io

from ..core.reflection.http_chat import ConfigError, OpenAIChat, check_key_env
from ..kit import category, node_id, plain_errors
from ..model_loaders import llm, siglip
from .folder_loader import FolderModelLoader
from .io_types import LLM, SIGLIP

DEFAULT_URL = "http://127.0.0.1:8080/v1"
DEFAULT_TIMEOUT, DEFAULT_RETRIES, DEFAULT_BACKOFF = 120.0, 2, 1.0


class SigLIPLoader(FolderModelLoader):
    loader_id = "SigLIPLoader"
    loader_title = "SigLIP2 Loader (keyframe retrieval)"
    loader_help = ("Loads SigLIP2 image and text towers (e.g. siglip2-base-patch16-naflex, as UniVid's reference "
                   "code) from a Hugging Face folder in models/siglip, for the Pyramid Reflection QA node's frame "
                   "retrieval. Safetensors only.")
    model_tooltip = ("A sub-folder of models/siglip (or a siglip path in extra_model_paths.yaml) with config.json, "
                     "*.safetensors, tokenizer and preprocessor files.")
    model_roots = staticmethod(siglip.model_roots)
    list_models = staticmethod(siglip.list_models)
    load = staticmethod(siglip.load_siglip)

    @staticmethod
    def output():
        return SIGLIP.Output(display_name="siglip")


class LocalLLMLoader(FolderModelLoader):
    loader_id = "LocalLLMLoader"
    loader_title = "LLM / VLM Loader (local)"
    loader_help = ("Loads a text LLM or a vision-language model (e.g. Qwen2.5-VL) from models/LLM through "
                   "transformers, for the Pyramid Reflection QA node: a Hugging Face folder (config.json, "
                   "*.safetensors, tokenizer/processor files) or a .gguf file (text models; dequantised on load). "
                   "Generation is greedy. Managed by ComfyUI's model memory manager.")
    model_tooltip = ("A folder with config.json and *.safetensors, or a .gguf file (also one folder down), in "
                     "models/LLM or an LLM path of extra_model_paths.yaml.")
    model_roots = staticmethod(llm.model_roots)
    list_models = staticmethod(llm.list_models)
    load = staticmethod(llm.load_local)

    @staticmethod
    def output():
        return LLM.Output(display_name="llm", tooltip="For the vlm, llm or reflector input of the QA node.")


# -- OpenAI-compatible endpoint -------------------------------------------------------------------------------
class OpenAICompatibleLLM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("OpenAICompatibleLLM"),
            display_name="LLM / VLM (OpenAI-compatible endpoint)",
            category=category("loaders"),
            description=("A chat model behind an OpenAI-compatible HTTP API (llama.cpp server, vLLM, Ollama, "
                         "LM Studio, hosted APIs) for the Pyramid Reflection QA node. Frames are sent as image "
                         "content when 'vision' is on. The API key is read from the environment variable you name "
                         "here when a request is made; it never appears in the workflow, outputs or logs."),
            inputs=[
                io.String.Input("base_url", default=DEFAULT_URL,
                                tooltip=f"The API root; /chat/completions is appended. Default {DEFAULT_URL} "
                                        "(a llama.cpp server on this machine)."),
                io.String.Input("model", default="",
                                tooltip="Model name sent with each request. Default empty: not sent (servers "
                                        "with a single model, such as llama.cpp's, ignore it)."),
                io.String.Input("api_key_env", default="",
                                tooltip="NAME of the environment variable that holds the API key (e.g. "
                                        "OPENAI_API_KEY), never the key. Default empty: no key is sent."),
                io.Boolean.Input("vision", default=True,
                                 tooltip="Default on: the model takes images (needed for the vlm input: Actor and "
                                         "frame notes). Off for text-only models (llm and reflector inputs)."),
                io.Float.Input("timeout", default=DEFAULT_TIMEOUT, min=0.1, max=3600.0, step=0.5,
                               tooltip=f"Seconds to wait for the server's reply. Default {DEFAULT_TIMEOUT:g}, range "
                                       "0.1–3600."),
                io.Int.Input("retries", default=DEFAULT_RETRIES, min=0, max=10,
                             tooltip=f"Retries after a timeout, a refused connection, HTTP 408/429/5xx. Default "
                                     f"{DEFAULT_RETRIES}, range 0–10."),
                io.Float.Input("backoff", default=DEFAULT_BACKOFF, min=0.0, max=60.0, step=0.1,
                               tooltip=f"Seconds before the first retry, doubling each time (a Retry-After header "
                                       f"wins). Default {DEFAULT_BACKOFF:g}, range 0–60."),
                io.Float.Input("temperature", default=0.0, min=0.0, max=2.0, step=0.05,
                               tooltip="Sampling temperature. Default 0 (most deterministic), range 0–2."),
            ],
            outputs=[LLM.Output(display_name="llm", tooltip="For the vlm, llm or reflector input of the QA node.")],
        )

    @classmethod
    def validate_inputs(cls, api_key_env=None):
        """Only api_key_env (see kit.py, input rules): a key pasted there is refused before the prompt is queued
        and kept in the history. base_url is checked when the node runs."""
        try:
            if api_key_env is not None:
                check_key_env(api_key_env)
        except ConfigError as e:
            return str(e)
        return True

    @classmethod
    @plain_errors
    def execute(cls, base_url, model, api_key_env, vision, timeout, retries, backoff,
                temperature) -> io.NodeOutput:
        backend = OpenAIChat(base_url=base_url, model=model, api_key_env=api_key_env, vision=vision,
                             timeout=timeout, retries=retries, backoff=backoff, temperature=temperature)
        backend.api_key()  # a missing key variable is reported here, before any frame is embedded
        return io.NodeOutput(backend)
