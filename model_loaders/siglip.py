"""SigLIP2 loader for keyframe retrieval (UniVid §2.4, A.6 eq. 6; reference: siglip2-base-patch16-naflex): image and
text towers from a Hugging Face folder under ``models/siglip``, through transformers, in a ModelPatcher so ComfyUI
can move and evict it. Safetensors only. Embeddings come back L2-normalised, float32, on the CPU.
"""
from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch

from ..core.model_folders import check_safetensors, list_folders, read_config, resolve, signature
from ..core.reflection.params import EMBED_BATCH
from ..core.reflection.retrieval import normalize
from .transformers_models import choose_dtype, dtype_kwargs, managed

FOLDER_KEY = "siglip"
MODEL_TYPES = ("siglip2",)
TEXT_LENGTH = 64   # SigLIP2's text tower was trained on 64 tokens padded to full length



@dataclass(eq=False)
class SiglipRetriever:
    patcher: comfy.model_patcher.ModelPatcher
    image_processor: object
    tokenizer: object
    folder: str
    dtype: torch.dtype
    key: tuple
    text_length: int = TEXT_LENGTH

    @property
    def cache_key(self) -> tuple:
        return self.key

    def _image_kwargs(self) -> dict:
        """The folder's own patch settings, passed explicitly (class defaults would otherwise win)."""
        kwargs = {}
        for name in ("patch_size", "max_num_patches"):
            value = getattr(self.image_processor, name, None)
            if value is not None:
                kwargs[name] = value
        return kwargs

    def _net(self):
        # Full load: transformers' modules are not comfy.ops, so a partial (lowvram) load would leave some behind.
        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        return self.patcher.model.net, self.patcher.load_device

    def _to(self, batch: dict, device) -> dict:
        return {k: (v.to(device, self.dtype) if torch.is_floating_point(v) else v.to(device))
                for k, v in batch.items() if isinstance(v, torch.Tensor)}

    @staticmethod
    def _vectors(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def embed_images(self, frames: torch.Tensor, batch_size: int = EMBED_BATCH) -> torch.Tensor:
        """[N, D] unit vectors of IMAGE frames [N, H, W, 3], in batches; the progress bar counts frames."""
        if frames.ndim != 4 or frames.shape[-1] < 3 or frames.shape[0] == 0:
            raise ValueError(f"expected IMAGE frames [N, H, W, 3], got shape {tuple(frames.shape)}")
        net, device = self._net()
        bar = comfy.utils.ProgressBar(frames.shape[0])
        chunks = []
        with torch.inference_mode():
            for start in range(0, frames.shape[0], batch_size):
                chunk = frames[start:start + batch_size, ..., :3].permute(0, 3, 1, 2).float().clamp(0, 1)
                inputs = self.image_processor(images=list(chunk), do_rescale=False, return_tensors="pt",
                                              **self._image_kwargs())
                chunks.append(self._vectors(net.get_image_features(**self._to(inputs, device))).float().cpu())
                bar.update(chunk.shape[0])
        return normalize(torch.cat(chunks))

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[M, D] unit vectors; lower-cased and padded to 64 tokens as SigLIP2 was trained."""
        net, device = self._net()
        tokens = self.tokenizer([t.lower() for t in texts], padding="max_length", truncation=True,
                                max_length=self.text_length, return_tensors="pt")
        with torch.inference_mode():
            return normalize(self._vectors(net.get_text_features(**self._to(tokens, device))).float().cpu())


def model_roots() -> list[str]:
    import folder_paths

    return folder_paths.get_folder_paths(FOLDER_KEY)


def list_models() -> list[str]:
    return list_folders(model_roots())


_LOADED: "weakref.WeakValueDictionary[tuple, SiglipRetriever]" = weakref.WeakValueDictionary()


def load_siglip(name: str, precision: str) -> SiglipRetriever:
    folder, gguf = resolve(name, model_roots())
    if gguf:
        raise ValueError(f"model_name: {name!r} is a GGUF file; SigLIP2 loads from a Hugging Face folder")
    config = read_config(folder)
    if config.get("model_type") not in MODEL_TYPES:
        raise ValueError(f"{folder}: config.json describes a {config.get('model_type')!r} model, not SigLIP2 "
                         f"(model_type {MODEL_TYPES[0]!r})")
    weights = check_safetensors(folder)
    dtype = choose_dtype(precision, comfy.model_management.get_torch_device())
    key = ("siglip", os.path.realpath(folder), str(dtype), signature(folder, ["config.json", *weights]))
    cached = _LOADED.get(key)
    if cached is not None:
        return cached
    logging.info("UniCascade: loading SigLIP from %s (%s)", folder, str(dtype).removeprefix("torch."))
    try:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        net = AutoModel.from_pretrained(folder, use_safetensors=True, local_files_only=True, **dtype_kwargs(dtype))
        image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        raise RuntimeError(f"could not load SigLIP from {folder}: {e}") from e
    positions = (config.get("text_config") or {}).get("max_position_embeddings", TEXT_LENGTH)
    retriever = SiglipRetriever(managed(net), image_processor, tokenizer, folder, dtype, key,
                                min(TEXT_LENGTH, int(positions)))
    _LOADED[key] = retriever
    return retriever
