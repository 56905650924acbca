"""Start and drive a real ComfyUI server in a subprocess (tests, demo, benches).

Nothing here imports ComfyUI: the server runs as ``python main.py --cpu`` on loopback, with
this pack and the tiny models tree added through ``--extra-model-paths-config``; all talk is
HTTP (``/prompt``, ``/history``, ``/interrupt``, ``/object_info``) and the ``/ws`` websocket.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from .models_tree import write_extra_model_paths

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_COMFY_DIR = os.path.join(REPO_ROOT, ".comfyui", "ComfyUI")
PACK_LINK_NAME = "comfyui-fdd-video-edit"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI process with its own input / output / user / temp folders under ``workdir``."""

    def __init__(self, workdir: str, models_root: str, comfy_dir: str = DEFAULT_COMFY_DIR,
                 pack_dir: str = REPO_ROOT, port: int | None = None, python: str = sys.executable,
                 extra_args: tuple[str, ...] = ()):
        if not os.path.isfile(os.path.join(comfy_dir, "main.py")):
            raise FileNotFoundError(f"ComfyUI not found at {comfy_dir}; run scripts/setup.sh first")
        self.workdir = os.path.abspath(workdir)
        self.comfy_dir = comfy_dir
        self.port = port or free_port()
        self.python = python
        self.extra_args = tuple(extra_args)
        self.input_dir = os.path.join(self.workdir, "input")
        self.output_dir = os.path.join(self.workdir, "output")
        self.custom_nodes = os.path.join(self.workdir, "custom_nodes")
        for d in (self.input_dir, self.output_dir, self.custom_nodes,
                  os.path.join(self.workdir, "temp"), os.path.join(self.workdir, "user")):
            os.makedirs(d, exist_ok=True)
        link = os.path.join(self.custom_nodes, PACK_LINK_NAME)
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(pack_dir), link)
        self.yaml = write_extra_model_paths(os.path.join(self.workdir, "extra_model_paths.yaml"),
                                            models_root, self.custom_nodes)
        self.log_path = os.path.join(self.workdir, "comfyui.log")
        self.proc: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex
        self.events: list[dict] = []
        self._ws_thread: threading.Thread | None = None
        self._ws = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                "--extra-model-paths-config", self.yaml, "--input-directory", self.input_dir,
                "--output-directory", self.output_dir,
                "--temp-directory", os.path.join(self.workdir, "temp"),
                "--user-directory", os.path.join(self.workdir, "user"),
                "--database-url", "sqlite:///" + os.path.join(self.workdir, "user", "comfyui.db"),
                "--disable-auto-launch", *self.extra_args]

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1",
                   PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.comfy_dir, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        else:
            self.stop()
            raise TimeoutError(f"ComfyUI did not answer within {timeout}s; log:\n{self.log_tail()}")
        self._start_ws()
        return self

    def log_tail(self, n: int = 60) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return b"\n".join(fh.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""

    # -- HTTP -------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: Any = None, timeout: float = 30) -> tuple[int, Any]:
        data = b"" if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
                return r.status, (json.loads(body) if body.strip() else None)
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, body.decode("utf-8", "replace")

    def queue(self, prompt: dict) -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise RuntimeError(f"POST /prompt failed with {status}: {json.dumps(body)[:2000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Wait until the prompt leaves the queue; returns its /history entry."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist:
                entry = hist[prompt_id]
                if entry.get("status", {}).get("completed") is not None or entry.get("outputs"):
                    return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died; log:\n{self.log_tail()}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s; log:\n{self.log_tail()}")

    def interrupt(self) -> None:
        self.post("/interrupt")

    def output_files(self, entry: dict) -> list[str]:
        """Absolute paths of every file the prompt's output nodes saved."""
        files = []
        for out in entry.get("outputs", {}).values():
            for key in ("images", "gifs", "videos", "animated"):
                for item in out.get(key, []) or []:
                    if isinstance(item, dict) and "filename" in item:
                        base = self.output_dir if item.get("type", "output") == "output" else \
                            os.path.join(self.workdir, item.get("type", "output"))
                        files.append(os.path.join(base, item.get("subfolder", ""), item["filename"]))
        return files

    # -- websocket events -------------------------------------------------------------------
    def _start_ws(self) -> None:
        try:
            import websocket  # websocket-client
        except ImportError:
            return
        ws = websocket.WebSocket()
        ws.connect(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=10)
        ws.settimeout(1.0)
        self._ws = ws

        def run():
            while self._ws is not None:
                try:
                    msg = ws.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                except Exception:
                    break
                if isinstance(msg, str):
                    try:
                        self.events.append(json.loads(msg))
                    except ValueError:
                        pass

        self._ws_thread = threading.Thread(target=run, daemon=True)
        self._ws_thread.start()

    def events_of(self, kind: str, prompt_id: str | None = None) -> list[dict]:
        out = []
        for e in list(self.events):
            if e.get("type") == kind:
                data = e.get("data", {})
                if prompt_id is None or data.get("prompt_id") == prompt_id:
                    out.append(data)
        return out

    def stop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def prepare_demo_inputs(server: ComfyServer, clip_name: str = "fdd_demo_clip.mp4", frames: int = 16,
                        size: int = 64, fps: float = 8.0) -> str:
    """Write the moving-shapes demo clip into the server's input folder."""
    from .clip import moving_shapes_clip, write_video

    path = os.path.join(server.input_dir, clip_name)
    if not os.path.exists(path):
        write_video(moving_shapes_clip(frames, size, size), path, fps)
    return path
