"""A real ComfyUI server in a subprocess, driven over its HTTP + websocket API (model: ComfyUI's own
tests/execution/test_execution.py). Started once per test session; each test uses its own output prefix."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import websocket

from .paths import COMFY_DIR, PYTHON, REPO

PACK_NAME = "ComfyUI-UniCascade"


class PromptFailed(AssertionError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base_directory(base: str, extra_custom_nodes: list[str] = ()) -> None:
    """ComfyUI base directory whose custom_nodes holds the pack (as a user installs it: a folder there)."""
    custom = os.path.join(base, "custom_nodes")
    os.makedirs(custom, exist_ok=True)
    for src, name in [(REPO, PACK_NAME)] + [(p, os.path.basename(p)) for p in extra_custom_nodes]:
        dst = os.path.join(custom, name)
        if not os.path.lexists(dst):
            os.symlink(src, dst)
    for sub in ("models", "input", "output", "temp", "user"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)


class ComfyServer:
    def __init__(self, base: str, port: int | None = None, env: dict | None = None, extra_args: list[str] = (),
                 log_name: str = "server.log"):
        self.base = base
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.log_path = os.path.join(base, log_name)
        self.env = {**os.environ, **(env or {})}
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self._ws: websocket.WebSocket | None = None
        self.events: list[tuple[str, dict]] = []
        self.binary_frames: list[bytes] = []

    # -- life cycle -------------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> "ComfyServer":
        cmd = [PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", self.base, "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
               "--disable-api-nodes", *self.extra_args]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=COMFY_DIR, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:
                pass
            self._ws = None
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-chars:]
        except OSError:
            return "(no log)"

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    # -- HTTP -------------------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict | None, timeout: float = 30):
        data = json.dumps(payload or {}).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
                return r.status, (json.loads(body) if body else None)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def object_info(self) -> dict:
        return self.get("/object_info")

    # -- prompts ----------------------------------------------------------------------------------------
    def _websocket(self) -> websocket.WebSocket:
        if self._ws is None:
            self._ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}",
                                                   timeout=600)
        return self._ws

    def queue(self, prompt: dict) -> str:
        """Queue an API-format prompt; raise PromptFailed with the node errors if validation refuses it."""
        self._websocket()
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise PromptFailed(f"/prompt refused ({status}): {json.dumps(body, indent=1)[:4000]}")
        return body["prompt_id"]

    def validate_error(self, prompt: dict) -> dict:
        """Queue a prompt that must fail validation; return the server's error body."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status == 200:
            raise AssertionError(f"prompt was accepted, expected a validation error: {body}")
        return body

    def wait(self, prompt_id: str, timeout: float = 900) -> dict:
        """Follow websocket events until the prompt finishes; return its history entry. The prompt's events (type,
        data) stay in ``self.events``."""
        ws = self._websocket()
        self.events: list[tuple[str, dict]] = []
        self.binary_frames = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            ws.settimeout(max(1.0, deadline - time.time()))
            try:
                message = ws.recv()
            except websocket.WebSocketTimeoutException:
                raise PromptFailed(f"prompt {prompt_id} did not finish within {timeout}s:\n{self.log_tail()}")
            if not isinstance(message, str):
                self.binary_frames.append(message)  # preview images (kept for the preview tests)
                continue
            event = json.loads(message)
            data = event.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            self.events.append((event["type"], data))
            if event["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                break
            if event["type"] == "executing" and data.get("node") is None:
                break
        return self.history(prompt_id)

    def history(self, prompt_id: str) -> dict:
        for _ in range(100):
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                return entry
            time.sleep(0.1)
        raise PromptFailed(f"no history for {prompt_id}:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 900) -> dict:
        """Queue, wait, and fail with the server log if execution did not succeed."""
        entry = self.wait(self.queue(prompt), timeout)
        status = entry.get("status", {})
        if status.get("status_str") != "success":
            raise PromptFailed(f"prompt failed: {json.dumps(status.get('messages'), indent=1)[:4000]}\n"
                               f"--- server log ---\n{self.log_tail()}")
        return entry

    def run_expecting_error(self, prompt: dict, timeout: float = 900) -> dict:
        """Queue a prompt that must fail during execution; return its execution_error message data."""
        entry = self.wait(self.queue(prompt), timeout)
        status = entry.get("status", {})
        if status.get("status_str") != "error":
            raise AssertionError(f"expected an execution error, got {status}")
        for kind, data in status.get("messages", []):
            if kind == "execution_error":
                return data
        raise AssertionError(f"no execution_error message in {status}")

    def refusal(self, prompt: dict, timeout: float = 900) -> dict:
        """A prompt with a bad input value, refused where the host refuses it: newer hosts check every combo input
        (V3 ones too) when the prompt is queued, 0.3.75 leaves V3 combos to the node, which refuses at run time.
        Returns {"stage": "validation" | "run", "text": the message(s), "flagged": {node: [inputs]} or the failing
        node's type}."""
        self._websocket()
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            return {"stage": "validation", "text": json.dumps(body), "flagged": flagged_inputs(body)}
        entry = self.wait(body["prompt_id"], timeout)
        for kind, data in entry.get("status", {}).get("messages", []):
            if kind == "execution_error":
                return {"stage": "run", "text": data["exception_message"], "flagged": data["node_type"]}
        raise AssertionError(f"the prompt was neither refused nor failed: {entry.get('status')}")

    def output_path(self, *parts: str) -> str:
        return os.path.join(self.base, "output", *parts)


def flagged_inputs(body: dict) -> dict[str, list[str]]:
    """What a /prompt refusal marks: node class → the inputs its errors name (the frontend outlines those)."""
    marked: dict[str, list[str]] = {}
    for entry in body.get("node_errors", {}).values():
        marked.setdefault(entry["class_type"], []).extend(e["extra_info"]["input_name"] for e in entry["errors"])
    return marked


def assert_combo_refused(server: ComfyServer, prompt: dict, node_type: str, name: str, value: str,
                         run_message: str) -> None:
    """A bad combo value is refused naming only its input: when queued on hosts that check V3 combos (0.33+), or by
    the node's own check when it runs (0.3.75, which leaves V3 combos to the node)."""
    refused = server.refusal(prompt)
    if refused["stage"] == "validation":
        assert refused["flagged"] == {node_type: [name]} and f"{value!r} not in" in refused["text"], refused
    else:
        assert refused["flagged"] == node_type and run_message in refused["text"], refused


def clear_directory(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
