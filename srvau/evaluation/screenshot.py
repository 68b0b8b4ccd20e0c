"""Pictures of what a run produces, taken in a real headless Chromium: the evaluation report, and the MLflow
page of the registered model version. ``make screenshots`` writes them to ``docs/images/`` for the README.

    python -m srvau.evaluation.screenshot [--eval-dir reports/eval] [--mlflow-db mlflow.db] [--out docs/images]

The report is rendered afresh from the evaluation outputs (metrics.json, predictions/, inference.json)
into a temporary folder with the current report code, so the picture shows today's report without
rewriting ``reports/eval``. The MLflow page is served by ``mlflow server`` on a *copy* of the tracking
database (the UI may migrate or write to its store) on a free loopback port, and stopped afterwards.

Chromium is driven by its own command line (``--headless --screenshot``): no browser download, no driver.
``SRVAU_CHROMIUM`` names the binary when it is not on PATH. Each picture is checked before it is kept:
the expected size, and not one flat colour (a page that did not render).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
REPORT_SIZE = (1280, 1400)
MLFLOW_SIZE = (1600, 1000)
MODEL_NAME = "srvau-qwen2_5-vl"


class ScreenshotError(RuntimeError):
    pass


def find_chromium() -> str:
    """The Chromium binary: ``SRVAU_CHROMIUM``, else the first of CHROMIUM_NAMES on PATH."""
    env = os.environ.get("SRVAU_CHROMIUM")
    if env:
        if not Path(env).is_file():
            raise ScreenshotError(f"SRVAU_CHROMIUM={env} does not exist")
        return env
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise ScreenshotError(
        "no headless Chromium found (looked for " + ", ".join(CHROMIUM_NAMES) + " on PATH): install it "
        "(Debian/Ubuntu: `apt-get install -y chromium`) or set SRVAU_CHROMIUM to its path"
    )


def screenshot(url: str, out: Path, size: tuple[int, int], wait_ms: int = 3000, timeout_s: float = 180) -> Path:
    """A ``size`` (width, height) picture of ``url`` (a file:// or http:// address) at ``out``.

    ``wait_ms`` is Chromium's virtual-time budget: how long the page's scripts may run before the picture
    (a JavaScript app such as the MLflow UI needs seconds to fetch and draw)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="srvau-chromium-") as profile:
        cmd = [
            find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1", f"--user-data-dir={profile}",
            f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={wait_ms}", url,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise ScreenshotError(f"chromium took more than {timeout_s:.0f} s on {url}") from e
    if not out.is_file() or out.stat().st_size == 0:
        raise ScreenshotError(f"chromium wrote no picture of {url} (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return check_picture(out, size)


def check_picture(path: Path, size: tuple[int, int]) -> Path:
    """``path`` if it is a PNG of ``size`` with real content; ScreenshotError otherwise."""
    from PIL import Image, ImageStat

    with Image.open(path) as im:
        if im.format != "PNG" or im.size != tuple(size):
            raise ScreenshotError(f"{path}: a {im.format} of {im.size}, expected a PNG of {tuple(size)}")
        grey = im.convert("L")
        if ImageStat.Stat(grey).stddev[0] < 5 or len(grey.getcolors(maxcolors=1 << 16) or range(1 << 16)) < 16:
            raise ScreenshotError(f"{path}: the picture is (nearly) blank: the page did not render")
    return path


# ----------------------------------------------------------------------------- the report


def render_report(eval_dir: Path, out_dir: Path) -> Path:
    """The evaluation report of ``eval_dir`` (metrics.json, predictions/, inference.json) rendered anew by
    the current code into ``out_dir``; returns the HTML's path."""
    from srvau.config import find_project_root, load_params
    from srvau.evaluation.report import write_report
    from srvau.io import read_jsonl

    eval_dir = Path(eval_dir)
    metrics_path = eval_dir / "metrics.json"
    if not metrics_path.is_file():
        raise ScreenshotError(f"no {metrics_path}: run the pipeline first (`make run`)")
    results = json.loads(metrics_path.read_text())
    # the models' predictions; the prior (srvau.evaluation.prior) has numbers but generates nothing
    records = {m: read_jsonl(p) for m in results if (p := eval_dir / "predictions" / f"{m}.jsonl").is_file()}
    inference = json.loads((eval_dir / "inference.json").read_text()) if (eval_dir / "inference.json").is_file() else {}
    cfg = load_params().evaluate
    info = {
        "split": cfg.split,
        "videos": next((v.get("videos") for v in inference.values()), None),
        "models": {m: v.get("checkpoint") for m, v in inference.items()},
        "primary_style": cfg.primary_style,
    }
    root = find_project_root(eval_dir)  # the checkpoints are shown relative to the project the outputs came from
    return write_report(results, records, Path(out_dir) / "report.html", info, cfg.primary_style, cfg.iou_right, root=root)


def report_picture(eval_dir: Path, out: Path, size: tuple[int, int] = REPORT_SIZE) -> Path:
    with tempfile.TemporaryDirectory(prefix="srvau-report-") as tmp:
        html = render_report(eval_dir, Path(tmp))
        return screenshot(html.resolve().as_uri(), out, size)


# ----------------------------------------------------------------------------- the MLflow model version page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_version(db: Path, name: str = MODEL_NAME) -> tuple[str, str]:
    """(name, version) to show: the ``champion`` alias, else the newest version of ``name``."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT version FROM registered_model_aliases WHERE name = ? AND alias = 'champion'", (name,)).fetchone()
        row = row or con.execute("SELECT MAX(version) FROM model_versions WHERE name = ?", (name,)).fetchone()
    except sqlite3.DatabaseError as e:
        raise ScreenshotError(f"{db} is not an MLflow tracking database: {e}") from e
    finally:
        con.close()
    if not row or row[0] is None:
        raise ScreenshotError(f"{db} has no registered version of {name}: run the pipeline first (`make run`)")
    return name, str(row[0])


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ScreenshotError(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ScreenshotError(f"mlflow server not up at {url} after {timeout_s:.0f} s:\n{log_path.read_text(errors='replace')[-2000:]}")


def mlflow_picture(db: Path, out: Path, size: tuple[int, int] = MLFLOW_SIZE, name: str = MODEL_NAME,
                   wait_ms: int = 20000, start_timeout_s: float = 180) -> Path:
    """The MLflow UI page of ``name``'s champion (else newest) version, served from a copy of ``db``."""
    db = Path(db)
    if not db.is_file():
        raise ScreenshotError(f"no MLflow database at {db}: run the pipeline first (`make run`)")
    mlflow = Path(sys.executable).with_name("mlflow")
    with tempfile.TemporaryDirectory(prefix="srvau-mlflow-") as tmp:
        copy = Path(tmp) / "mlflow.db"
        shutil.copyfile(db, copy)
        name, version = model_version(copy, name)
        port = _free_port()
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log_f:
            proc = subprocess.Popen(
                [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{copy}", "--host", "127.0.0.1",
                 "--port", str(port), "--workers", "1"],
                cwd=tmp, stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            _wait_http(f"http://127.0.0.1:{port}/health", proc, start_timeout_s, log_path)
            url = f"http://127.0.0.1:{port}/#/models/{quote(name)}/versions/{version}"
            log.info("screenshot of %s", url)
            return screenshot(url, out, size, wait_ms=wait_ms)
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """The server's whole process group (its workers too)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    from srvau.config import PROJECT_ROOT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-dir", type=Path, default=PROJECT_ROOT / "reports" / "eval", help="the evaluate stage's outputs")
    ap.add_argument("--mlflow-db", type=Path, default=PROJECT_ROOT / "mlflow.db", help="the MLflow tracking database (copied, never written)")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "images")
    ap.add_argument("--only", choices=("report", "mlflow"), help="one picture only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        find_chromium()
        written = []
        if args.only in (None, "report"):
            written.append(report_picture(args.eval_dir, args.out / "report.png"))
        if args.only in (None, "mlflow"):
            written.append(mlflow_picture(args.mlflow_db, args.out / "mlflow-model-version.png"))
    except ScreenshotError as e:
        print(f"screenshots: {e}", file=sys.stderr)
        return 2
    for p in written:
        print(f"screenshot: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
