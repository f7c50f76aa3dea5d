"""A client for OpenAI-compatible chat endpoints (``POST {base_url}/chat/completions``), as the UniVid reference
setup used for its hosted Evaluator/Reflector LLMs: timeouts, retries with exponential backoff, frames sent as
``image_url`` data URLs.

The API key is read from the named environment variable at each call and kept nowhere else: not in this object,
its repr, cache key, errors or logs (any echo of it in a server's error text is masked).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

from .backend import BackendError, ChatRequest
from .images import to_data_url

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_RETRY_AFTER = 60.0
log = logging.getLogger("UniCascade")


class ConfigError(ValueError):
    """The endpoint is set up wrongly (bad URL, key variable not set): not retried, never a silent fallback."""


def check_base_url(base_url: str) -> str:
    url = str(base_url or "").strip()
    parts = urllib.parse.urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"base_url: {url!r} is not an http(s) URL such as http://127.0.0.1:8080/v1")
    return url.rstrip("/")


def check_key_env(name: str) -> str:
    name = str(name or "").strip()
    if name and not all(c.isalnum() or c == "_" for c in name):
        raise ConfigError("api_key_env: this is not an environment variable name (letters, digits, _; not echoed "
                          "here in case it is a key); put the NAME of the variable here, never the key itself")
    return name


@dataclass(eq=False)
class OpenAIChat:
    base_url: str
    model: str = ""
    api_key_env: str = ""
    vision: bool = True
    timeout: float = 120.0
    retries: int = 2
    backoff: float = 1.0
    temperature: float = 0.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def __post_init__(self):
        self.base_url = check_base_url(self.base_url)
        self.api_key_env = check_key_env(self.api_key_env)
        self.model = str(self.model or "").strip()
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout}")
        if self.retries < 0 or self.backoff < 0:
            raise ConfigError("retries and backoff must not be negative")

    # -- ChatBackend ------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.model or 'default model'} @ {self.base_url}"

    @property
    def supports_images(self) -> bool:
        return self.vision

    @property
    def cache_key(self) -> tuple:
        return ("openai", self.base_url, self.model, self.temperature)

    @property
    def endpoint(self) -> str:
        return self.base_url if self.base_url.endswith("/chat/completions") else self.base_url + "/chat/completions"

    def api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env, "")
        if not value:
            raise ConfigError(f"api_key_env: the environment variable {self.api_key_env} is not set (or empty) in "
                              "ComfyUI's environment; set it before starting ComfyUI, or leave api_key_env empty "
                              "for a server that needs no key")
        return value

    def payload(self, request: ChatRequest) -> dict:
        if request.images and not self.vision:
            raise ConfigError(f"{self.name} has 'vision' off but the {request.role} role sends images")
        if request.images:
            content = [{"type": "image_url", "image_url": {"url": to_data_url(img, request.image_max_side)}}
                       for img in request.images]
            content.append({"type": "text", "text": request.user})
        else:
            content = request.user
        body = {"messages": [{"role": "system", "content": request.system}, {"role": "user", "content": content}],
                "max_tokens": int(request.max_new_tokens), "temperature": float(self.temperature), "stream": False}
        if self.model:
            body["model"] = self.model
        return body

    def chat(self, request: ChatRequest) -> str:
        key = self.api_key()
        data = json.dumps(self.payload(request)).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        attempts = 1 + int(self.retries)
        last = "no attempt"
        for attempt in range(attempts):
            retry_after = None
            try:
                body = self._post(data, headers)
                return self._content(body, key)
            except urllib.error.HTTPError as e:
                detail = self._mask(_read_error(e), key)
                last = f"HTTP {e.code} ({e.reason}): {detail}"
                if e.code not in RETRY_STATUS:
                    raise BackendError(f"{self.endpoint}: {last}") from None
                retry_after = _retry_after(e)
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                kind = "timed out" if isinstance(reason, (socket.timeout, TimeoutError)) else "unreachable"
                last = f"{kind} ({self._mask(str(reason), key)})"
                if kind == "timed out":
                    last = f"no reply within {self.timeout:g} s"
            if attempt + 1 < attempts:
                wait = retry_after if retry_after is not None else self.backoff * (2 ** attempt)
                log.warning("UniCascade: LLM endpoint %s: %s; retrying in %.1f s (attempt %d of %d)",
                            self.endpoint, last, wait, attempt + 1, attempts)
                self.sleep(wait)
        raise BackendError(f"{self.endpoint}: {last} after {attempts} attempt{'s' if attempts > 1 else ''}")

    # -- helpers ----------------------------------------------------------------------------------------
    def _post(self, data: bytes, headers: dict) -> bytes:
        req = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
        host = urllib.parse.urlparse(self.endpoint).hostname
        handlers = [urllib.request.ProxyHandler({})] if host in LOOPBACK else []
        with urllib.request.build_opener(*handlers).open(req, timeout=self.timeout) as response:
            return response.read()

    def _content(self, body: bytes, key: str | None) -> str:
        excerpt = self._mask(body[:200].decode("utf-8", "replace"), key)
        try:
            reply = json.loads(body)
            message = reply["choices"][0]["message"]
            content = message.get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(f"{self.endpoint}: the reply is not an OpenAI chat completion: {excerpt!r}") from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BackendError(f"{self.endpoint}: the reply's message content is not text: {excerpt!r}")
        return content

    @staticmethod
    def _mask(text: str, key: str | None) -> str:
        text = " ".join(str(text).split())[:300]
        return text.replace(key, "***") if key else text


def _read_error(e: urllib.error.HTTPError) -> str:
    try:
        return e.read().decode("utf-8", "replace")
    except Exception:
        return ""


def _retry_after(e: urllib.error.HTTPError) -> float | None:
    try:
        value = float(e.headers.get("Retry-After", ""))
    except (TypeError, ValueError, AttributeError):
        return None
    return min(max(value, 0.0), MAX_RETRY_AFTER)
