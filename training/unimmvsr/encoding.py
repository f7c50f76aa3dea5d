"""Pixels → what the backbone trains on: VAE latents (raw, as the VAE gives them; normalised into the model's
space only when the loss is built, by the same functions the sampler uses) and text embeddings, with an optional
on-disk cache (safetensors, one file per clip draw / per prompt) so that later epochs skip the encoders.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch

from ...core.unimmvsr.reference_layout import ID_IMAGE, REFERENCE_VIDEO


@dataclass
class LatentSample:
    hr: torch.Tensor                               # [1, C, t, h, w] raw VAE latent of the HR window
    lr: torch.Tensor                               # [1, C, t, h, w] raw latent of the upsampled LR video
    references: list = field(default_factory=list)  # [(category, raw latent [1, C, k, h, w])], IDs first
    context: torch.Tensor | None = None            # [1, L, D] text embedding (null prompt when dropped)


def _digest(*parts) -> str:
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:24]


def pad_tokens(context: torch.Tensor, tokens: int, prompt: str = "") -> torch.Tensor:
    """[1, L, D] → [1, tokens, D] with zero tokens appended (the padding Wan's UMT5 output carries: ComfyUI's
    tokenizer pads to 512 and zeroes the padding's embeddings); ``tokens`` 0 returns the context unchanged."""
    length = context.shape[1]
    if tokens == 0 or length == tokens:
        return context
    if length > tokens:
        raise ValueError(f"prompt {prompt!r} encodes to {length} tokens, more than [data] text_tokens = {tokens}: "
                         f"shorten it or raise text_tokens")
    return torch.cat([context, context.new_zeros(context.shape[0], tokens - length, context.shape[2])], dim=1)


class TextEncoder:
    """Prompt → [1, L, D] through a ComfyUI CLIP object (as CLIPTextEncode encodes it), memoised, optionally on
    disk under ``cache_dir/text`` (as encoded); ``tokens`` > 0 zero-pads every result to that length
    (``pad_tokens``)."""

    def __init__(self, clip, cache_dir: str = "", tokens: int = 0):
        self.clip = clip
        self.cache_dir = os.path.join(cache_dir, "text") if cache_dir else ""
        self.tokens = tokens
        self.memory: dict[str, torch.Tensor] = {}

    def __call__(self, prompt: str) -> torch.Tensor:
        if prompt in self.memory:
            return self.memory[prompt]
        path = os.path.join(self.cache_dir, _digest(prompt) + ".safetensors") if self.cache_dir else ""
        if path and os.path.isfile(path):
            from safetensors.torch import load_file
            out = load_file(path)["context"]
        else:
            if self.clip is None:
                raise ValueError(f"no text encoder configured and no cached embedding for prompt {prompt!r}")
            with torch.no_grad():
                out = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))[0][0].float().cpu()
            if path:
                from safetensors.torch import save_file
                os.makedirs(self.cache_dir, exist_ok=True)
                tmp = f"{path}.{os.getpid()}.tmp"  # ranks may write the same entry at once
                save_file({"context": out.contiguous()}, tmp)
                os.replace(tmp, path)
        out = pad_tokens(out, self.tokens, prompt)
        self.memory[prompt] = out
        return out


class LatentEncoder:
    """Encodes a PixelSample's videos with a ComfyUI VAE; caches the result per (clip, stage, task, draw)."""

    def __init__(self, vae, cache_dir: str = ""):
        self.vae = vae
        self.cache_dir = os.path.join(cache_dir, "latents") if cache_dir else ""

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.encode(frames[..., :3]).float().cpu()

    def _path(self, cache_key: tuple | None) -> str:
        return os.path.join(self.cache_dir, _digest(*cache_key) + ".safetensors") \
            if self.cache_dir and cache_key is not None else ""

    def cached(self, cache_key: tuple | None) -> LatentSample | None:
        """The cached latents of a draw, or None (no cache, or not encoded yet)."""
        path = self._path(cache_key)
        return self._read(path) if path and os.path.isfile(path) else None

    def __call__(self, sample, cache_key: tuple | None = None) -> LatentSample:
        """Encodes ``sample`` (and writes it to the cache under ``cache_key``)."""
        path = self._path(cache_key)
        out = LatentSample(self.encode(sample.hr), self.encode(sample.lr_up))
        out.references = [(ID_IMAGE, self.encode(img)) for img in sample.id_images]
        if sample.reference_video is not None:
            out.references.append((REFERENCE_VIDEO, self.encode(sample.reference_video)))
        if path:
            self._write(path, out)
        return out

    @staticmethod
    def _write(path: str, s: LatentSample) -> None:
        from safetensors.torch import save_file
        tensors = {"hr": s.hr.contiguous(), "lr": s.lr.contiguous()}
        meta = {"references": ",".join(cat for cat, _ in s.references)}
        for i, (_, lat) in enumerate(s.references):
            tensors[f"ref_{i}"] = lat.contiguous()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"  # ranks may write the same entry at once
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)

    @staticmethod
    def _read(path: str) -> LatentSample:
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            cats = [c for c in (f.metadata() or {}).get("references", "").split(",") if c]
            out = LatentSample(f.get_tensor("hr"), f.get_tensor("lr"))
            out.references = [(c, f.get_tensor(f"ref_{i}")) for i, c in enumerate(cats)]
        return out
