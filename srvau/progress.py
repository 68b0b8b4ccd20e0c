"""Progress of the long loops (decoding videos, generating traces, inference, judging), seen wherever they run.

On a terminal it is a tqdm bar. Elsewhere (``dvc repro`` under the Prefect flow, CI logs) a bar is either
invisible (tqdm's ``disable=None`` turns it off without a TTY) or a wall of carriage returns, so the
loop logs a line instead each time it passes another tenth of the work or ``every_s`` seconds, and once at
the end: ``ingest videos: 24/48 (50%), 3.1 video/s, about 8 s left``.

``SRVAU_PROGRESS`` chooses: ``0`` (or ``off``) silent, ``log`` lines, ``bar`` a bar; unset, by the TTY.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

log = logging.getLogger("srvau.progress")

ENV = "SRVAU_PROGRESS"


def mode(stream: TextIO | None = None) -> str:
    """``"off"``, ``"log"`` or ``"bar"``: the environment's choice, else a bar only on a terminal."""
    choice = os.environ.get(ENV, "").strip().lower()
    if choice in ("0", "off", "false", "no"):
        return "off"
    if choice in ("log", "bar"):
        return choice
    stream = stream or sys.stderr
    try:
        return "bar" if stream.isatty() else "log"
    except (AttributeError, ValueError):  # a closed or replaced stream
        return "log"


class Progress:
    """A count of ``total`` units of work: ``update(n)`` as they finish, ``close()`` at the end.

    Iterate over it to wrap ``iterable`` (it counts one per item). ``enabled=False`` makes it silent
    (e.g. every rank but the first of a multi-process run).
    """

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "item", enabled: bool = True, every_s: float = 30.0, steps: int = 10,
                 logger: logging.Logger | None = None) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.every_s, self.steps, self.log = every_s, max(1, steps), logger or log
        self.mode = mode() if enabled else "off"
        self.n = 0
        self._t0 = self._last_t = time.monotonic()
        self._last_step = 0
        self._closed = False
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("Progress() without an iterable: call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log":
            now = time.monotonic()
            step = math.floor(self.n / self.total * self.steps) if self.total else 0
            if step > self._last_step or now - self._last_t >= self.every_s:
                if not (self.total and self.n >= self.total):  # the last line is close()'s
                    self._line(now)
                self._last_step, self._last_t = step, now

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log" and (self.n or self.total):
            elapsed = time.monotonic() - self._t0
            self.log.info("%s: %d %s%s in %.1f s", self.desc, self.n, self.unit, "" if self.n == 1 else "s", elapsed)

    def _line(self, now: float) -> None:
        elapsed = max(now - self._t0, 1e-9)
        rate = self.n / elapsed
        if self.total:
            left = (self.total - self.n) / rate if rate else float("inf")
            eta = f", about {left:.0f} s left" if math.isfinite(left) else ""
            self.log.info("%s: %d/%d (%d%%), %.1f %s/s%s", self.desc, self.n, self.total,
                          100 * self.n // self.total, rate, self.unit, eta)
        else:
            self.log.info("%s: %d %s so far, %.1f %s/s", self.desc, self.n, self.unit, rate, self.unit)


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Progress:
    """``for x in progress(xs, desc="synth videos", unit="video")``, or ``with progress(total=n, ...) as p: p.update(k)``."""
    return Progress(iterable, **kwargs)
