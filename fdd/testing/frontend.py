"""Drive the real ComfyUI frontend in headless Chromium (tests, workflow thumbnails).

Uses Debian's ``chromium`` and the Python ``playwright`` package (no browser download: the
system browser is launched by path). The page is the one a user opens: it is served by a real
ComfyUI server, and workflows go in through ``app.loadGraphData`` exactly as a dropped file does.
Nothing here imports ComfyUI.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")

# console noise that is not about the graph: the page asks for web resources the sandbox
# cannot reach (fonts, release notes, template indexes)
_NETWORK_NOISE = ("Failed to load resource", "net::ERR_", "ERR_NAME_NOT_RESOLVED", "ERR_CONNECTION",
                  "Failed to fetch", "NetworkError", "releases", "fetch failed")


def find_chromium() -> str | None:
    env = os.environ.get("FDD_CHROMIUM")
    if env:
        return env if os.path.isfile(env) else None
    for p in CHROMIUM_CANDIDATES:
        if os.path.isfile(p):
            return p
    return shutil.which("chromium")


def browser_missing_reason() -> str | None:
    """Why the real-frontend tests cannot run here, or None when they can."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the Python package 'playwright' is not installed (scripts/setup.sh installs it)"
    if find_chromium() is None:
        return "no Chromium at /usr/bin/chromium (Debian package 'chromium'; scripts/setup.sh installs it)"
    return None


_LOAD_JS = """
async (wf) => {
  const app = window.app;
  const before = window.__fddErrors.length;
  await app.loadGraphData(structuredClone(wf), true, true, 'fdd-test');
  await new Promise(r => setTimeout(r, 300));
  const graph = app.graph;
  const nodes = graph._nodes ?? graph.nodes;
  const registered = (window.LiteGraph ?? {}).registered_node_types ?? {};
  const missing = nodes.filter(n => !(n.type in registered)).map(n => n.type);
  const boxes = {};
  const widgets = {};
  for (const n of nodes) {
    let min = null;
    try { const c = n.computeSize(); min = [c[0], c[1]]; } catch (e) {}
    const title = (window.LiteGraph ?? {}).NODE_TITLE_HEIGHT ?? 30;
    boxes[n.id] = {type: n.type, box: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title],
                   size: [n.size[0], n.size[1]], min};
    widgets[n.id] = (n.widgets ?? []).map(x => ({name: x.name, type: x.type, value: x.value,
                                               serialize: x.serialize !== false && x.options?.serialize !== false}));
  }
  const saved = graph.serialize();
  const p = await app.graphToPrompt();
  return {missing, boxes, widgets, saved, prompt: p.output,
          errors: window.__fddErrors.slice(before)};
}
"""


_BOUNDS_JS = """
() => {
  const app = window.app, g = app.graph, ds = app.canvas.ds;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  const add = (x, y, w, h) => { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h); };
  for (const n of (g._nodes ?? g.nodes)) add(n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30);
  for (const gr of (g._groups ?? g.groups ?? [])) { const b = gr._bounding ?? gr.bounding; add(b[0], b[1], b[2], b[3]); }
  const pad = 20;
  const rect = app.canvas.canvas.getBoundingClientRect();
  const a = ds.convertOffsetToCanvas([x0 - pad, y0 - pad]);
  const b = ds.convertOffsetToCanvas([x1 + pad, y1 + pad]);
  const cx = Math.max(0, rect.left + a[0]), cy = Math.max(0, rect.top + a[1]);
  return {x: cx, y: cy, width: Math.min(rect.left + b[0], rect.right) - cx,
          height: Math.min(rect.top + b[1], rect.bottom) - cy};
}
"""


class Frontend:
    """One headless Chromium page on a running ComfyUI server's frontend."""

    def __init__(self, url: str, viewport=(1920, 1080), chromium: str | None = None):
        self.url = url
        self.viewport = viewport
        self.chromium = chromium or find_chromium()
        self._pw = self._browser = self.page = None
        self.console: list[str] = []

    def __enter__(self) -> "Frontend":
        from playwright.sync_api import sync_playwright

        if self.chromium is None:
            raise RuntimeError(browser_missing_reason() or "no Chromium found")
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=self.chromium, headless=True,
                                                 args=["--no-sandbox", "--disable-gpu"])
        self.page = self._browser.new_page(viewport={"width": self.viewport[0], "height": self.viewport[1]})
        self.page.add_init_script("window.__fddErrors = [];"
                                  "window.addEventListener('error', e => window.__fddErrors.push(String(e.message)));"
                                  "window.addEventListener('unhandledrejection', e => window.__fddErrors.push(String(e.reason)));")
        self.page.on("console", self._on_console)
        # a returning user: no first-run template browser over the canvas
        for key, value in (("Comfy.TutorialCompleted", True), ("Comfy.Workflow.ShowMissingModelsWarning", False)):
            self.page.request.post(f"{self.url}/settings/{key}", data=json.dumps(value))
        self.page.goto(self.url, wait_until="domcontentloaded", timeout=180_000)
        self.page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=180_000)
        self.page.wait_for_timeout(1500)
        return self

    def _on_console(self, msg) -> None:
        text = msg.text
        self.console.append(f"{msg.type}: {text}")
        if msg.type in ("error",) and not any(s in text for s in _NETWORK_NOISE):
            try:
                self.page.evaluate("(t) => window.__fddErrors.push(t)", "console.error: " + text)
            except Exception:
                pass

    def __exit__(self, *exc) -> None:
        if self._browser is not None:
            self._browser.close()
        if self._pw is not None:
            self._pw.stop()

    def version(self) -> str:
        return self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? ''")

    def load(self, workflow: dict[str, Any]) -> dict[str, Any]:
        """Load a UI workflow as a dropped file is loaded; returns what the page built:
        ``missing`` node types, node ``boxes`` (``box`` [x, y, w, h] as drawn, title bar
        included; ``size`` and ``min``, the node's own computed size), ``widgets`` per node, the re-``saved`` UI graph, the ``prompt`` that
        Run would queue (``graphToPrompt().output``) and the page ``errors`` raised meanwhile."""
        self.page.keyboard.press("Escape")
        return self.page.evaluate(_LOAD_JS, workflow)

    def queue(self) -> None:
        """Press Run: the page converts and queues the loaded graph itself."""
        self.page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")

    def screenshot(self, path: str, width: int = 640) -> str:
        """A thumbnail of the canvas (JPEG, ``width`` px wide)."""
        from PIL import Image

        self.page.keyboard.press("Escape")
        self.page.evaluate("async () => { try { await window.app.extensionManager.command.execute("
                           "'Comfy.Canvas.FitView'); } catch (e) {} window.app.canvas.setDirty(true, true); }")
        self.page.wait_for_timeout(300)
        png = path + ".tmp.png"
        clip = self.page.evaluate(_BOUNDS_JS)
        self.page.screenshot(path=png, clip=clip)
        img = Image.open(png).convert("RGB")
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
        tmp = path + ".tmp"
        img.save(tmp, format="JPEG", quality=85)
        os.replace(tmp, path)
        os.remove(png)
        return path


def dump(result: dict[str, Any]) -> str:
    return json.dumps({k: result[k] for k in ("missing", "errors")}, indent=1)
