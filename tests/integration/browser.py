"""A headless Chromium driven over the DevTools protocol, stdlib only.

``--remote-debugging-pipe`` speaks CDP as NUL-terminated JSON on file
descriptors 3 (commands in) and 4 (replies and events out): no port, no
websocket client, no browser download. Enough to click through a page:
evaluate JavaScript, set a file input, take a screenshot, and see every
request the page made (``requests``).

The browser may resolve no host at all (``--host-resolver-rules``): whatever
the page shows came from 127.0.0.1.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"


class BrowserError(AssertionError):
    pass


class Browser:
    def __init__(self, profile: Path, *, width: int = 1280, height: int = 900) -> None:
        self._log_path = profile.with_name(profile.name + ".log")
        self._log = open(self._log_path, "wb")  # Chromium's own chatter; read on failure
        cmd_r, self._cmd_w = os.pipe()  # we write commands, Chromium reads fd 3
        self._out_r, out_w = os.pipe()  # Chromium writes fd 4, we read
        # The child's ends go to fds >= 10 first, so moving them to 3 and 4 clobbers neither.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (cmd_r, out_w)]
        for fd in (cmd_r, out_w):
            os.close(fd)
        cmd_r, out_w = high
        self.proc = subprocess.Popen(
            [
                "bash", "-c", f'exec 3<&"$1" 4>&"$2" {cmd_r}<&- {out_w}>&-; shift 2; exec "$@"',
                "bash", str(cmd_r), str(out_w),
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--disable-default-apps", "--remote-debugging-pipe",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--user-data-dir={profile}",
                f"--window-size={width},{height}", "about:blank",
            ],
            pass_fds=(cmd_r, out_w),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log,
        )
        os.close(cmd_r)
        os.close(out_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session = ""
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.send("Page.enable")
        self.send("Network.enable")
        self.send("Runtime.enable")

    # ------------------------------------------------------------ protocol

    def _read_message(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no answer from Chromium in time")
            ready, _, _ = select.select([self._out_r], [], [], left)
            if ready:
                chunk = os.read(self._out_r, 1 << 16)
                if not chunk:
                    raise BrowserError(f"Chromium exited: {self._log_path.read_text(errors='replace')[-2000:]}")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, timeout_s: float = 30, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    # -------------------------------------------------------------- helpers

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def js(self, expression: str, timeout_s: float = 30) -> Any:
        """The value of a JavaScript expression (a promise is awaited)."""
        result = self.send(
            "Runtime.evaluate", timeout_s=timeout_s + 5, expression=expression, awaitPromise=True,
            returnByValue=True, timeout=int(timeout_s * 1000),
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout_s: float = 20) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value (True for an object)."""
        return self.js(
            f"""new Promise((resolve, reject) => {{
                  const end = Date.now() + {int(timeout_s * 1000)};
                  (function poll() {{
                    let v; try {{ v = ({condition}); }} catch (e) {{ v = null; }}
                    if (v) return resolve(typeof v === 'object' ? true : v);  // an element: just say it is there
                    if (Date.now() > end) return reject(new Error("timed out waiting for: " + {json.dumps(condition)}));
                    setTimeout(poll, 50);
                  }})();
                }})""",
            timeout_s=timeout_s + 5,
        )

    def set_files(self, element: str, *paths: Path) -> None:
        """Choose files in the file input that the JavaScript expression ``element`` names."""
        obj = self.send("Runtime.evaluate", expression=element)["result"]
        if "objectId" not in obj:
            raise BrowserError(f"no element: {element}")
        self.send("DOM.setFileInputFiles", files=[str(p) for p in paths], objectId=obj["objectId"])

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def requests(self) -> list[str]:
        """Every URL the page asked for, in order."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout_s=5)
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._cmd_w)
        os.close(self._out_r)
        self._log.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
