"""Real servers on loopback for the infra tests: start in their own process group, wait, stop cleanly.

Every wait is bounded; a server that dies or never becomes healthy fails the test with its log tail.
"""

from __future__ import annotations

import os
import re
import signal
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

from srvau.config import PROJECT_ROOT

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> object:
    """Poll ``check`` until it returns something truthy; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Service:
    """A subprocess in its own session (so its children die with it), logging to a file."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None
    proc: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> "Service":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def wait_http(self, url: str, timeout: float) -> None:
        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(healthy, timeout, f"{self.name} at {url}")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{self.log_tail()}") from None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 20) -> None:
        """Send ``sig`` to the whole process group, SIGKILL what is left after ``grace`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        # Children that outlived the leader (same group) go too.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def project_copy(dest: Path, reading_drill_steps: int | None = 4) -> Path:
    """The tracked + untracked-not-ignored files of this checkout, as a fresh git(+DVC) project. Its tiny
    base practises reading options for ``reading_drill_steps`` steps only (params.yaml and the defaults):
    pipeline tests check the wiring; what the drills teach is tested in tests/model/test_tiny_model.py.
    None keeps the demo's own count (a run that must learn QA as `make run` does)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for f in files:
        src = PROJECT_ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    for f in ("params.yaml", "configs/defaults.yaml") if reading_drill_steps is not None else ():
        text = (dest / f).read_text()
        (dest / f).write_text(re.sub(r"(?m)^(\s+reading_drill_steps:) \d+", rf"\g<1> {reading_drill_steps}", text))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    return dest


def local_mlflow_server(root: Path) -> tuple[Service, str]:
    """A real `mlflow server` on a sqlite store and a local artifact folder under ``root`` (no S3, no
    inherited MLFLOW_/AWS_ settings); returns the service and its URL once /health answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    service = Service(
        "mlflow server",
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", (root / "artifacts").as_uri(),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env, root / "server.log",
    ).start()
    url = f"http://127.0.0.1:{port}"
    try:
        service.wait_http(f"{url}/health", timeout=240)
    except BaseException:
        service.stop(signal.SIGKILL, grace=5)
        raise
    return service, url
