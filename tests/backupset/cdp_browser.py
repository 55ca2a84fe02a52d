"""A real headless Chromium driven over the DevTools protocol (websocket, aiohttp's client), for page tests.

Outside CI a missing browser skips the test; under ``CI=true`` it fails (``.ci/run`` installs Debian's
``chromium``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest


def chromium_path() -> str:
    """The browser binary; skips (fails under CI=true) when none is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed (apt-get install -y chromium); CI must install it")
    pytest.skip("no chromium installed (apt-get install -y chromium)")


class Browser:
    """One headless Chromium with one page, spoken to through CDP."""

    def __init__(self) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="cdp"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._id = 0

    async def start(self, timeout: float = 60.0) -> Browser:
        """Launch the browser and attach to its page."""
        self.proc = subprocess.Popen(
            [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={self.profile}",
             "--remote-debugging-port=0", "--window-size=1200,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start its DevTools listener")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        while True:
            async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [t for t in await r.json() if t.get("type") == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("chromium has no page target")
            await asyncio.sleep(0.05)
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=64 << 20)
        return self

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command; returns its result (events in between are dropped)."""
        assert self.ws is not None
        self._id += 1
        mid = self._id
        await self.ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads((await asyncio.wait_for(self.ws.receive(), 60)).data)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result

    async def eval(self, expr: str) -> Any:
        """Evaluate JavaScript in the page; returns its value."""
        r = await self.send("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def open(self, url: str) -> None:
        """Navigate and wait until the page has loaded."""
        await self.send("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while await self.eval("document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not load")
            await asyncio.sleep(0.05)

    async def click(self, x: float, y: float) -> None:
        """A real mouse click (press and release) at viewport coordinates."""
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def screenshot(self, path: Path) -> None:
        """Save a PNG of the viewport."""
        r = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(r["data"]))

    async def close(self) -> None:
        """Close the connection and end the browser."""
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
