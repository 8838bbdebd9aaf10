"""Drive headless Chromium over the DevTools protocol (a websocket), for the HTML report tests.

Only what the tests need: start Chromium on a free loopback port, open a page,
record every request, console message, exception and log entry, evaluate
JavaScript, send keys, and take a full-page screenshot. Chromium is bounded in
time and always killed. ``python -m tests.integration.chromium PAGE.html OUT.png [MAX_HEIGHT]``
writes one screenshot; ``scripts/screenshot_report.py`` writes the README's two.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
DEADLINE_S = 60.0


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class Page:
    """One page over a DevTools websocket, with every event it saw."""

    ws: Any
    deadline: float
    events: list[dict[str, Any]] = field(default_factory=list)
    _next: int = 0

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        ident = self._next
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            msg = self._recv()
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result

    def wait_for(self, method: str) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            msg = self._recv()
            if msg.get("method") == method:
                return msg

    def _recv(self) -> dict[str, Any]:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("Chromium did not answer in time")
        self.ws.settimeout(left)
        msg: dict[str, Any] = json.loads(self.ws.recv())
        if "method" in msg:
            self.events.append(msg)
        return msg

    def of(self, method: str) -> list[dict[str, Any]]:
        return [e["params"] for e in self.events if e.get("method") == method]

    def evaluate(self, expression: str) -> Any:
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"evaluate failed: {out['exceptionDetails']}")
        return out["result"].get("value")

    def key(self, key: str) -> None:
        codes = {"ArrowRight": 39, "ArrowLeft": 37, "Home": 36, "End": 35, "Tab": 9}
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=key,
                windowsVirtualKeyCode=codes.get(key, 0),
            )

    def screenshot(
        self, path: Path, *, width: int = 1200, max_height: int | None = None, top: int = 0
    ) -> None:
        """The page from ``top`` down (at most ``max_height`` pixels), ``width`` CSS pixels
        wide, as PNG."""
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        metrics = self.send("Page.getLayoutMetrics")
        height = int(metrics["cssContentSize"]["height"]) - top
        if max_height is not None:
            height = min(height, max_height)
        shot = self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": top, "width": width, "height": height, "scale": 1},
        )
        path.write_bytes(base64.b64decode(shot["data"]))


@contextmanager
def open_page(url: str, *, chromium: str, timeout: float = DEADLINE_S) -> Iterator[Page]:
    """Start Chromium, open ``url`` with network/console/log recording on, yield the page
    once it has loaded; Chromium is killed on the way out, whatever happened."""
    import websocket  # websocket-client, the dev extra

    deadline = time.monotonic() + timeout
    profile = Path(tempfile.mkdtemp(prefix="sway-chromium-"))
    proc = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Chromium's own scratch folders (org.chromium.Chromium.*) go in the profile,
        # which is removed below, not in /tmp where every test run left one.
        env={**os.environ, "TMPDIR": str(profile)},
        # Its own process group: the helpers it starts are stopped with it.
        start_new_session=True,
    )
    ws = None
    try:
        port = _devtools_port(profile, proc, deadline)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.loads(resp.read())
        page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        ws = websocket.create_connection(page_ws, timeout=10, suppress_origin=True)
        page = Page(ws, deadline)
        for domain in ("Page", "Network", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        page.send("Page.navigate", url=url)
        page.wait_for("Page.loadEventFired")
        yield page
    finally:
        if ws is not None:
            ws.close()
        _stop(proc)
        _remove(profile)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Chromium and every helper process of its group: asked to quit, then killed (a
    helper that outlived the browser went on writing into the profile)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)  # the browser quits; stragglers are killed next
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _remove(profile: Path) -> None:
    """The profile, retried briefly while a dying helper's last writes land."""
    for _ in range(50):
        shutil.rmtree(profile, ignore_errors=True)
        if not profile.exists():
            return
        time.sleep(0.1)


def _devtools_port(profile: Path, proc: subprocess.Popen[bytes], deadline: float) -> int:
    """The port Chromium chose: first line of ``DevToolsActivePort`` in its profile."""
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Chromium exited with {proc.returncode} before listening")
        try:
            first = marker.read_text(encoding="utf-8").splitlines()[0]
            return int(first)
        except (OSError, IndexError, ValueError):
            time.sleep(0.1)
    raise TimeoutError("Chromium did not open its DevTools port in time")


def main(argv: list[str]) -> int:
    page_path, out = Path(argv[0]).resolve(), Path(argv[1])
    max_height = int(argv[2]) if len(argv) > 2 else None
    chromium = find_chromium()
    if chromium is None:
        print("chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    with open_page(page_path.as_uri(), chromium=chromium) as page:
        page.screenshot(out, max_height=max_height)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
