"""LLM / VLM backends for Pyramid Reflection (UniVid §2.4; docs/design.md §11): a local transformers model (a
Hugging Face folder or a GGUF file under ``models/LLM``) wrapped for ComfyUI's memory manager, and an
OpenAI-compatible HTTP endpoint. Both output a ``UNICASCADE_LLM`` the QA node gives its roles (Actor, Evaluator,
Reflector …).

Local weights: ``*.safetensors`` only for folders (pickled checkpoints are never opened), or one ``.gguf`` file
(transformers dequantises it; text models only). Vision-language models (e.g. Qwen2.5-VL) are recognised from
their config and loaded with their processor. The endpoint's API key is read from an environment variable at
each call: its name is a widget, the key itself never is.
"""
from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass

import comfy.model_management
import comfy.model_patcher
import torch

from ..core.reflection.backend import ChatRequest
from ..core.reflection.images import to_pil
from ..core.model_folders import (check_gguf, check_safetensors, list_folders, list_gguf, read_config, resolve,
                                  signature)
from .transformers_models import choose_dtype, dtype_kwargs, managed

FOLDER_KEY = "LLM"
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")



# -- local transformers backend -------------------------------------------------------------------------------
@dataclass(eq=False)
class TransformersChat:
    """A ChatBackend running a local transformers model greedily (deterministic answers)."""
    patcher: comfy.model_patcher.ModelPatcher
    processor: object            # AutoProcessor (vision) or tokenizer (text)
    vision: bool
    label: str
    key: tuple
    dtype: torch.dtype

    @property
    def name(self) -> str:
        return self.label

    @property
    def supports_images(self) -> bool:
        return self.vision

    @property
    def cache_key(self) -> tuple:
        return self.key

    def _tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def _inputs(self, request: ChatRequest) -> dict:
        if request.images and not self.vision:
            raise ValueError(f"{self.label} is a text model but the {request.role} role sends images")
        if self.vision:
            user = [{"type": "image"} for _ in request.images] + [{"type": "text", "text": request.user}]
            messages = [{"role": "system", "content": [{"type": "text", "text": request.system}]},
                        {"role": "user", "content": user}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            images = [to_pil(img, request.image_max_side) for img in request.images] or None
            return dict(self.processor(text=[text], images=images, return_tensors="pt"))
        tokenizer = self._tokenizer()
        messages = [{"role": "system", "content": request.system}, {"role": "user", "content": request.user}]
        if getattr(tokenizer, "chat_template", None):
            return dict(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                      return_dict=True))
        prompt = f"System: {request.system}\n\nUser: {request.user}\n\nAssistant:"
        return dict(tokenizer(prompt, return_tensors="pt"))

    def chat(self, request: ChatRequest) -> str:
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Interrupted(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return comfy.model_management.processing_interrupted()

        # Full load: transformers' modules are not comfy.ops, so a partial (lowvram) load would leave some behind.
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        net, device = self.patcher.model.net, self.patcher.load_device
        inputs = {k: (v.to(device, self.dtype) if torch.is_floating_point(v) else v.to(device))
                  for k, v in self._inputs(request).items() if isinstance(v, torch.Tensor)}
        tokenizer = self._tokenizer()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.inference_mode():
            out = net.generate(**inputs, max_new_tokens=int(request.max_new_tokens), do_sample=False,
                               pad_token_id=pad, stopping_criteria=StoppingCriteriaList([Interrupted()]))
        comfy.model_management.throw_exception_if_processing_interrupted()
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def model_roots() -> list[str]:
    import folder_paths

    return folder_paths.get_folder_paths(FOLDER_KEY)


def list_models() -> list[str]:
    roots = model_roots()
    return list_folders(roots) + list_gguf(roots)


def model_kind(folder: str, config: dict) -> str:
    """'vision' or 'text' from the config's model_type, as transformers' Auto classes would map it."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)

    model_type = config.get("model_type")
    has_processor = any(os.path.isfile(os.path.join(folder, f)) for f in PROCESSOR_FILES)
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and has_processor:
        return "vision"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "text"
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ValueError(f"{folder}: a vision-language model ({model_type!r}) without its processor files "
                         f"({' or '.join(PROCESSOR_FILES)})")
    raise ValueError(f"{folder}: config.json describes a {model_type!r} model, which is neither a text LLM nor a "
                     "vision-language model transformers can generate with")


_LOADED: "weakref.WeakValueDictionary[tuple, TransformersChat]" = weakref.WeakValueDictionary()


def load_local(name: str, precision: str) -> TransformersChat:
    folder, gguf = resolve(name, model_roots())
    load_device = comfy.model_management.get_torch_device()
    dtype = choose_dtype(precision, load_device)
    if gguf:
        check_gguf(os.path.join(folder, gguf))
        kind, files = "text", [gguf]
    else:
        kind = model_kind(folder, read_config(folder))
        files = ["config.json", *check_safetensors(folder)]
    key = ("local", os.path.realpath(folder), gguf, str(dtype), signature(folder, files))
    cached = _LOADED.get(key)
    if cached is not None:
        return cached
    logging.info("UniCascade: loading %s model %s (%s)", kind, os.path.join(folder, gguf or ""),
                 str(dtype).removeprefix("torch."))
    try:
        net, processor = _from_pretrained(folder, gguf, kind, dtype)
    except Exception as e:
        raise RuntimeError(f"could not load {name} from {folder}: {e}") from e
    backend = TransformersChat(managed(net), processor, kind == "vision", f"{name} (local)", key, dtype)
    _LOADED[key] = backend
    return backend


def _from_pretrained(folder: str, gguf: str | None, kind: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    common = dict(local_files_only=True, **dtype_kwargs(dtype))
    if gguf:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf, local_files_only=True)
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, **common), tokenizer
    if kind == "vision":
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        return AutoModelForImageTextToText.from_pretrained(folder, use_safetensors=True, **common), processor
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, **common), tokenizer
