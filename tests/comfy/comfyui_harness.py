"""A real ComfyUI for the tests and the workflow exporter: server, HTTP/websocket client, frontend.

- `locate()`: the ComfyUI checkout and its Python, installed by scripts/comfy_setup.sh (or named by
  $COMFYUI_DIR / $COMFYUI_PYTHON).
- `make_base_dir()`: a throw-away ComfyUI base directory (--base-directory): custom_nodes/ links this
  pack, models/wan22/ links the tiny checkpoints, input/ holds the test image and audio. The
  installed ComfyUI tree is never modified.
- `Server`: main.py --cpu on 127.0.0.1 and a free port, in its own process group; `import_failed()`
  reads the start-up import report.
- `Client`: POST /prompt with the websocket open first (events go only to the queuing client), and
  follows the prompt to its end; GET/POST helpers; /view downloads.
- `Frontend`: Debian chromium through Playwright (never downloads a browser) on the real frontend:
  load a workflow, list missing node types and page errors, export API/UI JSON, screenshot.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui-wan22-multigpu"
TASK_DIRS = ("t2v-A14B", "i2v-A14B", "ti2v-5B", "s2v-14B")


# ---------------------------------------------------------------------------------------- locate
def locate() -> tuple[Optional[Path], Optional[Path], str]:
    """(comfy_dir, python, reason-if-missing)."""
    cache = Path(os.environ.get("WAN22_COMFY_CACHE", REPO / ".comfy"))
    comfy = Path(os.environ.get("COMFYUI_DIR", cache / "ComfyUI"))
    python = Path(os.environ.get("COMFYUI_PYTHON", cache / "venv" / "bin" / "python"))
    if not (comfy / "main.py").is_file():
        return None, None, (f"no ComfyUI at {comfy} (run scripts/comfy_setup.sh, or set COMFYUI_DIR)")
    if not python.is_file():
        return None, None, f"no ComfyUI Python at {python} (run scripts/comfy_setup.sh, or set COMFYUI_PYTHON)"
    return comfy, python, ""


def tiny_root() -> Path:
    return Path(os.environ.get("WAN22_TINY", REPO.parent / "shared" / "wan22_tiny"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _task_ckpt(tiny: Path, task: str, dest_root: Path) -> Path:
    """tests/parity/_tiny.py's task folder of real links (the shared copy may hold link stubs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("wan22_tiny_links", REPO / "tests" / "parity" / "_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.task_ckpt(tiny, task, dest_root)


def make_base_dir(base: Path, tiny: Optional[Path] = None) -> Path:
    """custom_nodes/<pack> -> this repo; models/wan22/<task>: folders of links to the tiny
    checkpoints; input/: the tiny test image and audio."""
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (base / "models" / "wan22").mkdir(parents=True, exist_ok=True)
    (base / "input").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    if tiny is not None:
        for task in TASK_DIRS:
            _task_ckpt(tiny, task, base / "models" / "wan22")
        for name in os.listdir(tiny / "inputs"):
            shutil.copyfile(tiny / "inputs" / name, base / "input" / name)
    return base


# ---------------------------------------------------------------------------------------- server
class Server:
    def __init__(self, comfy: Path, python: Path, base: Path, extra_args: tuple = (),
                 env: Optional[dict] = None) -> None:
        self.comfy, self.python, self.base = comfy, python, base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.extra_args = tuple(extra_args)
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self.start_s = 0.0

    def start(self, timeout: float = 240) -> "Server":
        cmd = [str(self.python), "-u", "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base),
               "--database-url", "sqlite:///:memory:", *self.extra_args]
        env = dict(os.environ if self.env is None else self.env)
        env.pop("PYTHONPATH", None)
        t0 = time.perf_counter()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited during start-up (code {self.proc.returncode}):\n"
                                   + self.log()[-4000:])
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        self.start_s = time.perf_counter() - t0
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n" + self.log()[-4000:])

    def log(self) -> str:
        try:
            return re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def import_report(self) -> list[str]:
        lines = self.log().splitlines()
        out, on = [], False
        for line in lines:
            if "Import times for custom nodes" in line:
                on = True
                continue
            if on:
                text = line.replace("[INFO]", "").strip()
                if not text:
                    if out:
                        break
                    continue
                out.append(text)
        return out

    def import_failed(self, name: str = PACK_NAME) -> bool:
        log = self.log()
        return bool(re.search(rf"\(IMPORT FAILED\).*custom_nodes/{re.escape(name)}\s*$", log, re.M)
                    or re.search(rf"Cannot import .*custom_nodes/{re.escape(name)} module", log))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None


# ---------------------------------------------------------------------------------------- client
@dataclass
class Run:
    prompt_id: Optional[str]
    events: list = field(default_factory=list)       # [(type, data)] for this prompt, in order
    rejected: Optional[dict] = None                   # HTTP 400 body, or node_errors of an HTTP 200
    seconds: float = 0.0
    binary: list = field(default_factory=list)        # binary websocket messages (preview images)

    def types(self) -> list[str]:
        return [t for t, _ in self.events]

    def first(self, typ: str) -> Optional[dict]:
        return next((d for t, d in self.events if t == typ), None)

    @property
    def ok(self) -> bool:
        return self.rejected is None and self.first("execution_success") is not None

    def describe(self) -> str:
        if self.rejected is not None:
            return "rejected: " + json.dumps(self.rejected)[:3000]
        err = self.first("execution_error")
        if err:
            return (f"execution_error in {err.get('node_type')}: {err.get('exception_type')}: "
                    f"{err.get('exception_message')}\n" + "".join(err.get("traceback") or [])[-3000:])
        return "events: " + ", ".join(self.types())


class Client:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
            return json.loads(body) if r.headers.get_content_type() == "application/json" else body

    def post(self, path: str, payload: dict, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
                return r.status, (json.loads(body) if body[:1] in (b"{", b"[") else body)
        except urllib.error.HTTPError as e:
            body = e.read()
            return e.code, (json.loads(body) if body[:1] in (b"{", b"[") else body)

    def run(self, prompt: dict, timeout: float = 300,
            on_event: Optional[Callable[[str, dict, "Client", str], None]] = None,
            extra_data: Optional[dict] = None) -> Run:
        """Queue `prompt` and follow it to its end (the final `executing` with node None).
        `on_event(type, data, client, prompt_id)` sees every event of this prompt as it arrives.
        `extra_data`: the prompt's extra_data (e.g. {"preview_method": "latent2rgb"})."""
        import websocket

        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(f"ws://{self.url.split('://', 1)[1]}/ws?clientId={client_id}",
                                         timeout=timeout)
        t0 = time.perf_counter()
        try:
            payload = {"prompt": prompt, "client_id": client_id}
            if extra_data is not None:
                payload["extra_data"] = extra_data
            status, body = self.post("/prompt", payload)
            if status != 200:
                return Run(None, rejected=body, seconds=time.perf_counter() - t0)
            run = Run(body["prompt_id"])
            if body.get("node_errors"):
                run.rejected = {"node_errors": body["node_errors"]}
            deadline = time.time() + timeout
            while True:
                ws.settimeout(max(0.1, deadline - time.time()))
                try:
                    msg = ws.recv()
                except websocket.WebSocketTimeoutException:
                    raise TimeoutError(f"prompt {run.prompt_id} did not finish in {timeout} s; events: "
                                       f"{run.types()}") from None
                if isinstance(msg, bytes):       # only this client's: the socket is per run
                    run.binary.append(msg)
                    continue
                m = json.loads(msg)
                typ, data = m.get("type"), m.get("data") or {}
                if data.get("prompt_id") not in (None, run.prompt_id):
                    continue
                if typ in ("status", "progress_state", "crystools.monitor", "feature_flags"):
                    continue
                run.events.append((typ, data))
                if on_event is not None:
                    on_event(typ, data, self, run.prompt_id)
                if typ == "executing" and data.get("node") is None and data.get("prompt_id") == run.prompt_id:
                    break
            run.seconds = time.perf_counter() - t0
            return run
        finally:
            ws.close()

    def history_outputs(self, prompt_id: str) -> dict:
        for _ in range(40):
            hist = self.get(f"/history/{prompt_id}").get(prompt_id) or {}
            if hist.get("outputs") is not None and hist.get("status", {}).get("completed") is not None:
                return hist["outputs"]
            time.sleep(0.25)
        return {}

    def files(self, prompt_id: str) -> list[dict]:
        out = []
        for node_out in self.history_outputs(prompt_id).values():
            for items in node_out.values():
                if isinstance(items, list):
                    out.extend(i for i in items if isinstance(i, dict) and "filename" in i)
        return out

    def download(self, item: dict) -> bytes:
        q = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                    "type": item.get("type", "output")})
        return self.get(f"/view?{q}")


# ---------------------------------------------------------------------------------------- frontend
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
# Frontend 1.49.6 noise with no custom node at all: missing user files (404), no internet.
IGNORED_CONSOLE = [
    r"Failed to load resource: the server responded with a status of 404",
    r"Failed to load resource: net::ERR_",
    r"Failed to fetch",
    r"^ComfyApp graph accessed before initialization$",
]


def workflow_node_types(wf: dict) -> set:
    if "nodes" in wf:
        return {n["type"] for n in wf["nodes"]}
    return {v["class_type"] for v in wf.values() if isinstance(v, dict) and "class_type" in v}


class Frontend:
    """One headless Chromium page on the ComfyUI frontend (use as a context manager)."""

    def __init__(self, url: str, viewport=(1600, 1000), timeout_s: float = 120) -> None:
        self.url, self.viewport, self.timeout_s = url, viewport, timeout_s
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []

    def __enter__(self) -> "Frontend":
        from playwright.sync_api import sync_playwright

        self._profile = tempfile.mkdtemp(prefix="wan22-chromium-")
        self._pw = sync_playwright().start()
        self._ctx = self._pw.chromium.launch_persistent_context(
            self._profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": self.viewport[0], "height": self.viewport[1]})
        self.page = self._ctx.pages[0] if self._ctx.pages else self._ctx.new_page()
        self.page.set_default_timeout(self.timeout_s * 1000)
        ignores = [re.compile(p) for p in IGNORED_CONSOLE]
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)[:2000]))
        self.page.on("console", lambda m: m.type == "error" and not any(r.search(m.text) for r in ignores)
                     and self.console_errors.append(m.text[:2000]))
        self.page.goto(self.url + "/", wait_until="domcontentloaded")
        self.page.wait_for_function(
            "() => window.app && window.app.graph && window.LiteGraph && "
            "Object.keys(window.LiteGraph.registered_node_types || {}).length > 0 && document.querySelector('canvas')")
        self.page.wait_for_timeout(1500)   # extension setup() hooks
        self.close_dialogs()
        return self

    def close_dialogs(self) -> None:
        """The first start of a fresh profile opens the template browser: close it."""
        for _ in range(3):
            if not self.page.query_selector("[role=dialog]"):
                break
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(300)

    def __exit__(self, *exc) -> None:
        try:
            self._ctx.close()
            self._pw.stop()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    def js(self, expr: str, arg=None):
        return self.page.evaluate(expr, arg)

    def registered(self) -> set:
        return set(self.js("() => Object.keys(LiteGraph.registered_node_types)"))

    def load(self, wf: dict, name: str = "workflow.json") -> None:
        if "nodes" in wf:
            self.js("async ([wf, name]) => { await app.loadGraphData(wf, true, true, name); }", [wf, name])
        else:
            self.js("async ([wf, name]) => { await app.loadApiJson(wf, name); }", [wf, name])
        self.page.wait_for_timeout(800)

    def missing_nodes(self, wf: dict) -> list[str]:
        return sorted(workflow_node_types(wf) - self.registered())

    def export_api(self) -> dict:
        return self.js("async () => (await app.graphToPrompt()).output")

    def serialize(self) -> dict:
        return self.js("() => app.graph.serialize()")

    def fit_view(self) -> None:
        try:
            self.js("async () => { await app.extensionManager.command.execute('Comfy.Canvas.FitView'); }")
        except Exception:  # noqa: BLE001 - the command id differs between frontend versions
            self.js("() => app.canvas.ds && app.graph && app.canvas.setDirty(true, true)")
        self.page.wait_for_timeout(400)

    def screenshot(self, path: str) -> None:
        self.page.screenshot(path=path)
