"""Content-keyed caches, so a video's frame embeddings (and its global caption) are computed once across queued
prompts (UniVid A.6: "All frame embeddings are computed once and cached")."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch


def content_digest(frames: torch.Tensor) -> str:
    """A digest of the frames' exact values and shape (changes when any pixel does)."""
    data = frames.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.blake2b(digest_size=20)
    h.update(repr(tuple(data.shape)).encode())
    h.update(data.numpy().data)
    return h.hexdigest()


class LRUCache:
    """A small thread-safe least-recently-used map."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
