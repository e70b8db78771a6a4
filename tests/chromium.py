"""Headless Chromium driven over the DevTools protocol (websocket-client), for page tests.

Only what the tests need: open a page, evaluate JavaScript, set a file input, take a
screenshot. ``find_chromium`` says why a test must skip when there is no browser.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-allow-origins=*", "--window-size=1280,900"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_chromium() -> tuple[str | None, str]:
    """(the browser binary, or None and the reason)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            try:
                import websocket  # noqa: F401
            except ImportError:
                return None, "websocket-client is not installed (pip install -e '.[test]')"
            return path, ""
    return None, "Chromium is absent (apt-get install -y chromium)"


class Chromium:
    def __init__(self, binary: str, profile: Path, timeout: float = 60.0):
        import websocket

        self.port = free_port()
        self.log = open(profile.parent / "chromium.log", "wb")
        self.process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}",
                                         f"--remote-debugging-port={self.port}", "about:blank"],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        url = None
        while url is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"Chromium did not start (see {self.log.name})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as answer:
                    pages = [t for t in json.load(answer) if t.get("type") == "page"]
                url = pages[0]["webSocketDebuggerUrl"] if pages else None
            except OSError:
                pass
            if url is None:
                time.sleep(0.2)
        self.socket = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.ids = itertools.count(1)

    def send(self, method: str, **params):
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, ready: str = "document.readyState === 'complete'", timeout: float = 30.0) -> None:
        self.send("Page.enable")
        self.send("Page.navigate", url=url)
        self.wait_for(ready, timeout)

    def wait_for(self, expression: str, timeout: float = 30.0):
        """Poll until ``expression`` is truthy. An exception counts as "not yet": right after
        ``Page.navigate`` the old document (about:blank) may still answer, where the new
        page's elements are null; the last one is reported at the timeout."""
        deadline, failure = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError as error:  # raised by evaluate for a script exception
                value, failure = None, error
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout} s for {expression}" + (f"; last error: {failure}" if failure else ""))

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Choose files in an <input type=file>, as a user would (fires its change event)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
