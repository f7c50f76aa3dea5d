"""How the loop talks to models: one chat request per call, answered with text (UniVid Alg. 1 roles)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

# The roles of one question; 'note' and 'actor' send images, the others are text only.
ROLES = ("router", "note", "summary", "actor", "evaluator", "reflector", "global")


@dataclass
class ChatRequest:
    role: str
    system: str
    user: str
    images: list[torch.Tensor] = field(default_factory=list)   # IMAGE frames [H, W, 3] float 0–1, in order
    max_new_tokens: int = 256
    image_max_side: int = 448      # images are downscaled (never upscaled) to this longest side before sending


class BackendError(RuntimeError):
    """A model call failed (unreachable endpoint, timeout, HTTP error, a reply that is not a chat completion).
    Text roles fall back on it; the vision roles (Actor, frame notes) stop the run with it."""


@runtime_checkable
class ChatBackend(Protocol):
    name: str                 # shown in traces and errors (never a secret)
    supports_images: bool

    @property
    def cache_key(self) -> tuple: ...

    def chat(self, request: ChatRequest) -> str: ...


def describe(backend) -> str:
    return str(getattr(backend, "name", type(backend).__name__))
