"""Headless Chromium driven through chromedriver's W3C WebDriver HTTP API (urllib only, no new dependencies).

Everything stays on loopback: chromedriver listens on 127.0.0.1 and only accepts local clients."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from imagegen_pipeline.net import free_port
from imagegen_pipeline.ui import stop, wait_http

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,900"]


def missing() -> str | None:
    """Why the browser tests cannot run here, or None (Debian: `make system-deps` installs both)."""
    for exe, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not exe.is_file():
            return f"{exe} not found: install the Debian package {pkg} (`make system-deps` as root)"
    return None


class Browser:
    """One headless Chromium session with a fresh profile; use as a context manager."""

    def __init__(self, *, log: Path | None = None, timeout: float = 30):
        self._profile = Path(tempfile.mkdtemp(prefix="imagegen-chromium-"))
        self._port = free_port()
        self._base = f"http://127.0.0.1:{self._port}"
        self._log = log
        argv = [str(CHROMEDRIVER), f"--port={self._port}", "--allowed-ips=127.0.0.1"]
        if log:
            argv.append(f"--log-path={log}")
        self._driver = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        self._session = ""
        try:
            wait_http(f"{self._base}/status", timeout=timeout, proc=self._driver)
            caps = {"browserName": "chrome", "goog:chromeOptions": {
                "binary": str(CHROMIUM), "args": [*CHROMIUM_ARGS, f"--user-data-dir={self._profile}"]}}
            self._session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}},
                                       timeout=timeout)["sessionId"]
        except BaseException:
            self.close()
            raise

    def _call(self, method: str, path: str, body: dict | None = None, *, timeout: float = 30):
        data = json.dumps(body if body is not None else {}).encode() if method == "POST" else None
        req = urllib.request.Request(self._base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.load(resp)["value"]
        except urllib.error.HTTPError as exc:  # WebDriver errors come back as JSON with a message
            raise RuntimeError(f"WebDriver {method} {path}: {exc.read().decode(errors='replace')[:2000]}") from None

    def _s(self, path: str) -> str:
        return f"/session/{self._session}{path}"

    def open(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url}, timeout=60)

    def script(self, js: str, *args):
        return self._call("POST", self._s("/execute/sync"), {"script": js, "args": list(args)})

    def text(self) -> str:
        """The rendered page's visible text."""
        return self.script("return document.body ? document.body.innerText : '';")

    def wait_for_text(self, *needles: str, timeout: float) -> str:
        """Poll the rendered page until every needle is in its text; return the text, or fail with what was there."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if all(n in text for n in needles):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{needles} not all on the page after {timeout:.0f} s; it shows:\n{text[:3000]}")
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", self._s("/screenshot"))))
        return path

    def close(self) -> None:
        try:
            if self._session:
                self._call("DELETE", self._s(""), timeout=15)
        except (OSError, RuntimeError):
            pass  # the driver's process group is killed below anyway
        finally:
            self._session = ""
            stop(self._driver, timeout=5)
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
