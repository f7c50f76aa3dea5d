"""The real ComfyUI frontend in headless Debian chromium, driven by Playwright (never a browser download).

Launch flags follow the machine notes (docs/design.md §12): no sandbox (root), no GPU, no background networking (the
network is closed), a fresh user-data directory per session.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time

CHROMIUM = os.environ.get("UNICASCADE_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]
PACK_URL_PART = "/extensions/ComfyUI-UniCascade/"
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingNodesWarning": True}


class ComfyPage:
    def __init__(self, server, artifacts: str):
        self.server = server
        self.artifacts = artifacts
        self.events: list[dict] = []   # console messages, page errors, failed requests
        self._playwright = self._context = self.page = None
        self._profile = None

    # -- life cycle -------------------------------------------------------------------------------------
    def start(self) -> "ComfyPage":
        from playwright.sync_api import sync_playwright

        if not os.path.exists(CHROMIUM):
            raise RuntimeError(f"no chromium at {CHROMIUM}: `apt-get install chromium` (make setup does it as root)")
        for key, value in SETTINGS.items():
            status, _ = self.server.post(f"/settings/{key}", value)
            assert status == 200, f"could not set {key}"
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self._playwright = sync_playwright().start()
        self._context = self._playwright.chromium.launch_persistent_context(
            self._profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1600, "height": 1000})
        self.page = self._context.new_page()
        self.page.on("console", lambda m: self.events.append(
            {"kind": "console", "type": m.type, "text": m.text, "url": (m.location or {}).get("url", "")}))
        self.page.on("pageerror", lambda e: self.events.append(
            {"kind": "pageerror", "type": "error", "text": f"{e}\n{getattr(e, 'stack', '')}", "url": ""}))
        self.page.on("response", lambda r: r.status >= 400 and self.events.append(
            {"kind": "response", "type": "error", "text": f"{r.status} {r.url}", "url": r.url}))
        self.reload()
        return self

    def reload(self) -> None:
        self.page.goto(self.server.url)
        self.page.wait_for_function(
            "window.app && window.app.graph && window.LiteGraph && window.app.extensionManager", timeout=120_000)
        self.page.wait_for_function(
            "Object.keys(window.LiteGraph.registered_node_types).some(t => t.startsWith('UniCascade'))",
            timeout=60_000)
        self.page.evaluate("() => window.app.extensionManager?.dialog?.closeDialog?.()")

    def stop(self) -> None:
        for closer in (self._context, self._playwright):
            try:
                closer and (closer.close() if closer is self._context else closer.stop())
            except Exception:
                pass
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)

    # -- what the pack did ------------------------------------------------------------------------------
    def pack_errors(self) -> list[dict]:
        """Errors that come from the pack: its files failing to load, or errors raised in its code."""
        out = []
        for e in self.events:
            if e["type"] not in ("error", "assert"):
                continue
            if PACK_URL_PART in e["url"] or PACK_URL_PART in e["text"] or "UniCascade.core" in e["text"]:
                out.append(e)
        return out

    def pack_loaded(self) -> bool:
        return self.page.evaluate(
            "() => window.app.extensionManager ? window.app.extensions.some(e => e.name === 'UniCascade.core') : false")

    # -- graph ------------------------------------------------------------------------------------------
    def load_workflow(self, workflow: dict) -> None:
        self.page.evaluate("async (wf) => { await window.app.loadGraphData(wf, true, true, 'test'); }", workflow)
        self.page.wait_for_timeout(300)

    def toasts(self) -> list[str]:
        """Messages the frontend raised as toasts (invalid workflow, missing models, execution errors)."""
        return self.page.locator(".p-toast-message").all_inner_texts()

    def clear_toasts(self) -> None:
        self.page.evaluate("() => document.querySelectorAll('.p-toast-message').forEach(e => e.remove())")

    def missing_node_types(self, workflow: dict) -> list[str]:
        types = sorted({n["type"] for n in workflow["nodes"]})
        return self.page.evaluate("(types) => types.filter(t => !window.LiteGraph.registered_node_types[t])", types)

    def set_widget(self, node_id: int, name: str, value) -> None:
        found = self.page.evaluate("""([id, name, value]) => {
            const node = window.app.graph.getNodeById(id);
            const w = node?.widgets?.find(w => w.name === name);
            if (!w) return false;
            w.value = value;
            w.callback?.(value, window.app.canvas, node);
            node.onWidgetChanged?.(name, value, null, w);
            window.app.graph.setDirtyCanvas(true, true);
            return true; }""", [node_id, name, value])
        assert found, f"node {node_id} has no widget {name}"

    def api_prompt(self) -> dict:
        """The frontend's own UI → API conversion (what the Queue button sends)."""
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def click_run(self) -> None:
        button = self.page.locator('[data-testid="queue-button"]')
        if button.count() == 0:
            button = self.page.get_by_role("button", name=re.compile(r"^(Run|Queue)"))
        button.first.click()

    def screenshot(self, name: str) -> str:
        os.makedirs(self.artifacts, exist_ok=True)
        self.page.evaluate("""() => {
            const nodes = window.app.graph._nodes;
            if (!nodes.length) return;
            const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - 30));
            const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
            const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1] + 40));
            const ds = window.app.canvas.ds;
            ds.scale = Math.min(1.0, (window.innerWidth - 120) / (x1 - x0), (window.innerHeight - 160) / (y1 - y0));
            ds.offset = [90 / ds.scale - x0, 110 / ds.scale - y0];
            window.app.graph.setDirtyCanvas(true, true); }""")
        self.page.wait_for_timeout(200)
        path = os.path.join(self.artifacts, f"{name}.png")
        self.page.screenshot(path=path)
        return path

    # -- queue ------------------------------------------------------------------------------------------
    def run_and_wait(self, timeout: float = 600) -> dict:
        """Click Run, then wait for the prompt the browser queued to finish; return its history entry."""
        before = set(self.server.get("/history?max_items=10000"))
        self.click_run()
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.server.get("/history?max_items=10000")
            new = [k for k in history if k not in before and history[k].get("status", {}).get("completed") is not None]
            if new:
                return history[new[0]]
            time.sleep(0.25)
        raise AssertionError("the prompt queued from the browser did not finish")
