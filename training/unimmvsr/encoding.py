"""Pixels → what the backbone trains on: VAE latents (raw, as the VAE gives them; normalised into the model's
space only when the loss is built, by the same functions the sampler uses) and text embeddings, each with a
bounded cache (safetensors on disk, never pickles) so that reused draws and prompts skip the encoders.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
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


def real_tokens(context: torch.Tensor) -> int:
    """Tokens of [1, L, D] up to the last one that is not all zero (UMT5's padding is zeroed: only the prompt's own
    tokens are stored; ``pad_tokens`` restores the rest exactly)."""
    nonzero = context[0].abs().amax(dim=-1).nonzero()
    return int(nonzero[-1]) + 1 if len(nonzero) else 1


class TextEncoder:
    """Prompt → [1, L, D] through a ComfyUI CLIP object (as CLIPTextEncode encodes it).

    Only the prompt's real tokens are kept (``real_tokens``; the encoder's length L is stored with them and the zero
    padding restored on every call, so results are bit-identical), in ``dtype`` (bf16 for bf16 training: autocast
    casts the context to bf16 at the model's first layer anyway), in a least-recently-used memory cache of at most
    ``memory_mb`` and, with ``cache_dir``, on disk as one small safetensors file per prompt under 256 shard folders
    (``cache_dir/text/ab/…``). ``tokens`` > 0 zero-pads every result to that length (``pad_tokens``)."""

    def __init__(self, clip, cache_dir: str = "", tokens: int = 0, dtype: torch.dtype = torch.float32,
                 memory_mb: float = 1024.0):
        self.clip = clip
        self.cache_dir = os.path.join(cache_dir, "text") if cache_dir else ""
        self.tokens = tokens
        self.dtype = dtype
        self.budget = int(memory_mb * 2**20)
        self.memory: OrderedDict[str, tuple[torch.Tensor, int]] = OrderedDict()
        self.memory_bytes = 0

    def path(self, prompt: str) -> str:
        digest = _digest(prompt)
        return os.path.join(self.cache_dir, digest[:2], digest + ".safetensors") if self.cache_dir else ""

    def __call__(self, prompt: str) -> torch.Tensor:
        if prompt in self.memory:
            self.memory.move_to_end(prompt)
            real, length = self.memory[prompt]
        else:
            real, length = self._load(prompt)
            self._remember(prompt, real, length)
        return pad_tokens(pad_tokens(real.float(), length), self.tokens, prompt)

    def _load(self, prompt: str) -> tuple[torch.Tensor, int]:
        path = self.path(prompt)
        if path and os.path.isfile(path):
            from safetensors import safe_open
            with safe_open(path, "pt") as f:
                return f.get_tensor("context").to(self.dtype), int(f.metadata()["length"])
        if self.clip is None:
            raise ValueError(f"no text encoder configured and no cached embedding for prompt {prompt!r}")
        with torch.no_grad():
            out = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt))[0][0].float().cpu()
        return self.write(prompt, out)

    def write(self, prompt: str, context: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Store an encoded [1, L, D] embedding (its real tokens) in the disk cache; returns (real tokens, L)."""
        length = context.shape[1]
        real = context[:, :real_tokens(context)].to(self.dtype).clone()   # never a view of the padded storage
        path = self.path(prompt)
        if path:
            from safetensors.torch import save_file
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"  # ranks may write the same entry at once
            save_file({"context": real}, tmp, metadata={"length": str(length)})
            os.replace(tmp, path)
        return real, length

    def _remember(self, prompt: str, real: torch.Tensor, length: int) -> None:
        size = real.numel() * real.element_size()
        if size > self.budget:
            return
        self.memory[prompt] = (real, length)
        self.memory_bytes += size
        while self.memory_bytes > self.budget:
            _, (old, _) = self.memory.popitem(last=False)
            self.memory_bytes -= old.numel() * old.element_size()


class LatentEncoder:
    """Encodes a PixelSample's videos with a ComfyUI VAE. With ``max_gb`` > 0 and a ``cache_dir``, a draw's latents
    (keyed by clip, stage, task, variant) are written in ``dtype`` the second time the draw is requested — a draw
    requested once is never written — until the cache holds ``max_gb``; later requests read them back."""

    def __init__(self, vae, cache_dir: str = "", max_gb: float = 0.0, dtype: torch.dtype = torch.bfloat16):
        self.vae = vae
        self.cache_dir = os.path.join(cache_dir, "latents") if cache_dir and max_gb > 0 else ""
        self.budget = int(max_gb * 2**30)
        self.dtype = dtype
        self.requested: OrderedDict[str, None] = OrderedDict()   # digests asked for once (bounded)
        self.written = 0
        if self.cache_dir and os.path.isdir(self.cache_dir):
            self.written = sum(e.stat().st_size for d in os.scandir(self.cache_dir) if d.is_dir()
                               for e in os.scandir(d.path) if e.is_file())

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.encode(frames[..., :3]).float().cpu()

    def _path(self, cache_key: tuple | None) -> str:
        if not self.cache_dir or cache_key is None:
            return ""
        digest = _digest(*cache_key)
        return os.path.join(self.cache_dir, digest[:2], digest + ".safetensors")

    def cached(self, cache_key: tuple | None) -> LatentSample | None:
        """The cached latents of a draw, or None (no cache, or not written yet)."""
        path = self._path(cache_key)
        return self._read(path) if path and os.path.isfile(path) else None

    def __call__(self, sample, cache_key: tuple | None = None) -> LatentSample:
        """Encodes ``sample`` (and caches it under ``cache_key`` when it is the draw's second request)."""
        path = self._path(cache_key)
        out = LatentSample(self.encode(sample.hr), self.encode(sample.lr_up))
        out.references = [(ID_IMAGE, self.encode(img)) for img in sample.id_images]
        if sample.reference_video is not None:
            out.references.append((REFERENCE_VIDEO, self.encode(sample.reference_video)))
        if path and self._reused(os.path.basename(path)) and self.written < self.budget:
            self.written += self._write(path, out, self.dtype)
        return out

    def _reused(self, digest: str) -> bool:
        if digest in self.requested:
            return True
        self.requested[digest] = None
        if len(self.requested) > 1_000_000:
            self.requested.popitem(last=False)
        return False

    @staticmethod
    def _write(path: str, s: LatentSample, dtype: torch.dtype) -> int:
        from safetensors.torch import save_file
        tensors = {"hr": s.hr.to(dtype).contiguous(), "lr": s.lr.to(dtype).contiguous()}
        meta = {"references": ",".join(cat for cat, _ in s.references)}
        for i, (_, lat) in enumerate(s.references):
            tensors[f"ref_{i}"] = lat.to(dtype).contiguous()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"  # ranks may write the same entry at once
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
        return os.path.getsize(path)

    @staticmethod
    def _read(path: str) -> LatentSample:
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            cats = [c for c in (f.metadata() or {}).get("references", "").split(",") if c]
            out = LatentSample(f.get_tensor("hr").float(), f.get_tensor("lr").float())
            out.references = [(c, f.get_tensor(f"ref_{i}").float()) for i, c in enumerate(cats)]
        return out
