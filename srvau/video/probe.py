"""Safe inspection of untrusted video files: probing (and sampling) in a subprocess with a timeout.

decord is known to hang or segfault on some broken files and FFmpeg can spin on crafted input, so
nothing here opens a video in the calling process: :func:`probe` and :func:`probe_and_sample` run
each video in a child process of its own, kill it after ``timeout_s`` and turn every failure into
a :class:`ProbeError` with a short machine-readable ``reason``:

    missing, not_a_file, zero_byte            (checked in the parent, no child needed)
    unreadable        FFmpeg cannot open it as a media file (random bytes, moov atom lost to truncation)
    image_not_video   the container is a still image (e.g. a PNG or JPEG renamed .mp4)
    no_video_stream   a valid container without video (e.g. audio only)
    no_frames         a video stream without a single packet
    truncated         fewer packets than the container declares, or packets past the end of file
    undecodable       the first frame does not decode
    decode_failed     the sampled frames could not be decoded by decord nor by PyAV
    bad_size          the frame size cannot be resized under the policy (aspect ratio > 200)
    timeout           the child ran past ``timeout_s`` and was killed
    crashed           the child died (signal, e.g. a segfault in a native decoder) or gave no answer
    error             any other exception in the child (type and message in ``detail``)

The probe reads the container's packet index with PyAV (``srvau.video.timeline``; demux only, no
decoding: ~20 ms per 1800 frames) to get exact frame count, presentation timestamps and keyframes,
and flags a variable frame rate when frame durations differ by more than 2 ticks and 2 %. The
child of :func:`probe_and_sample` then plans the sampled frames (``srvau.video.sampling``), decodes
them (``srvau.video.decode``) and writes the frame-cache file, so a decoder hang on a file that
passed the probe is contained as well.

The children are forked by a fork server, ``python -m srvau.video.probe`` started once per calling
thread, which imports the decoders once (``_PRELOAD``): a fresh interpreter per video spent ~60 % of
ingestion importing numpy, PyAV and decord. A child is forked for each request and killed when it runs
past ``timeout_s``; the server only forks, waits and reports, so no video is ever opened in it. A
server that dies or stops answering is replaced at the next request.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from srvau.io import atomic_path, sha256_file
from srvau.video.timeline import Timeline, read_timeline

if TYPE_CHECKING:
    from srvau.config import VideoConfig

# Not imported from srvau.config: the probe server should not import pydantic.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# What every child needs, imported once by the server; numpy.ma is imported lazily by np.unique otherwise.
_PRELOAD = ("numpy", "numpy.ma", "av", "decord", "srvau.video.timeline", "srvau.video.sampling",
            "srvau.video.decode", "srvau.video.cache")
# The server answers within the child's timeout plus this; past it the server is taken for hung.
_SERVER_GRACE_S = 30.0


class ProbeError(Exception):
    """A file that cannot be used as a video; ``reason`` is one word, ``detail`` a short explanation."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class VideoInfo:
    """What ingestion records about one video file (manifest columns)."""

    sha256: str
    size_bytes: int
    codec: str
    width: int
    height: int
    num_frames: int
    fps: float  # average: num_frames / duration_s (exact for constant-rate clips)
    duration_s: float
    vfr: bool
    start_s: float = 0.0  # presentation time of the first frame; timestamps here are relative to it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def precheck(path: str | os.PathLike) -> int:
    """Checks that need no decoder; returns the size in bytes or raises ProbeError."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ProbeError("missing", str(p)) from None
    except OSError as e:
        raise ProbeError("unreadable", f"{type(e).__name__}: {e}") from None
    import stat

    if not stat.S_ISREG(st.st_mode):
        raise ProbeError("not_a_file", "not a regular file (directory, pipe, device)")
    if st.st_size == 0:
        raise ProbeError("zero_byte", "file is empty")
    return st.st_size


# FFmpeg's demuxers for single still images (found by magic bytes whatever the file is named):
# image2 (an image file or numbered sequence) and the <codec>_pipe family (png_pipe, jpeg_pipe,
# webp_pipe, bmp_pipe, tiff_pipe...). They yield a one-frame "video" of a made-up 25 fps.
_IMAGE_DEMUXERS = ("image2", "image2pipe")


def is_image_format(format_name: str) -> bool:
    """True for FFmpeg container names that hold a still image, not a video."""
    return any(n in _IMAGE_DEMUXERS or n.endswith("_pipe") for n in format_name.split(","))


# --- in-process part: runs inside the child ------------------------------------------------------


def _open_video(path: str) -> tuple[Any, Any]:
    import av

    try:
        container = av.open(path, metadata_errors="ignore")
    except av.error.FileNotFoundError:
        raise ProbeError("missing", path) from None
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise ProbeError("unreadable", _short(e)) from None
    fmt = container.format.name
    if is_image_format(fmt):
        container.close()
        raise ProbeError("image_not_video", f"container is a still image ({fmt}: {container.format.long_name})")
    if not container.streams.video:
        container.close()
        raise ProbeError("no_video_stream", f"streams: {[s.type for s in container.streams]}")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    return container, stream


def probe_inprocess(path: str, sha256: str | None = None) -> tuple[VideoInfo, Timeline]:
    """Probe in *this* process. Only for the child (or for files already known to be sane)."""
    import av

    size = precheck(path)
    container, stream = _open_video(path)
    with container:
        try:
            tl = read_timeline(container, stream)
        except av.error.FFmpegError as e:
            raise ProbeError("unreadable", f"demux: {_short(e)}") from None
        if tl.num_frames == 0:
            raise ProbeError("no_frames", "video stream has no packets")
        if tl.declared_frames and tl.num_frames < tl.declared_frames:
            raise ProbeError("truncated", f"{tl.num_frames} of {tl.declared_frames} declared frames present")
        if tl.end_byte > size:
            raise ProbeError("truncated", f"packets extend to byte {tl.end_byte}, file has {size}")
        try:
            container.seek(int(tl.keyframe_pts[0] if tl.keyframe_pts.size else tl.pts[0]), stream=stream)
            first = next(iter(container.decode(stream)))
        except (av.error.FFmpegError, StopIteration) as e:
            raise ProbeError("undecodable", f"first frame: {_short(e) or 'no frame'}") from None
        codec = stream.codec_context.name
        width, height = first.width, first.height
    duration = tl.duration_s
    info = VideoInfo(
        sha256=sha256 or sha256_file(path),
        size_bytes=size,
        codec=codec,
        width=int(width),
        height=int(height),
        num_frames=tl.num_frames,
        fps=tl.num_frames / duration if duration > 0 else 0.0,
        duration_s=duration,
        vfr=tl.vfr,
        start_s=float(tl.pts[0] * tl.time_base),
    )
    return info, tl


def sample_inprocess(
    path: str, policy: "VideoConfig | SimpleNamespace", out_path: str, sha256: str | None = None
) -> dict[str, Any]:
    """Probe, plan, decode and cache one video in *this* process (the child's job)."""
    from srvau.video.cache import save_frames
    from srvau.video.decode import DecodeError, decode_frames
    from srvau.video.sampling import plan_sampling

    info, tl = probe_inprocess(path, sha256)
    try:
        plan = plan_sampling(tl.times, info.duration_s, info.height, info.width, policy)
    except ValueError as e:
        raise ProbeError("bad_size", str(e)) from None
    try:
        clip = decode_frames(path, plan.indices, plan.size, backend=policy.decoder, timeline=tl)
    except DecodeError as e:
        raise ProbeError("decode_failed", str(e)) from None
    save_frames(out_path, clip, info=info, fingerprint=plan.fingerprint)
    return {"info": info.to_dict(), "frames": int(clip.frames.shape[0]), "backend": clip.backend,
            "height": plan.height, "width": plan.width, "fallback_reason": clip.fallback_reason}


def _short(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:limit]


# --- parent side ---------------------------------------------------------------------------------


class _Server:
    """One fork server (``python -m srvau.video.probe``): a JSON request per line in, a JSON answer out.

    Not multiprocessing's "forkserver": on Python 3.11 each of its children re-imports the parent's
    ``__main__`` script (the ``srvau`` CLI with typer and pydantic), which cost as much as the imports
    it saves (0.22 against 0.24 s per demo video)."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        self.stderr = tempfile.TemporaryFile()  # the server's own last words (its children keep theirs)
        self.proc = subprocess.Popen([sys.executable, "-m", "srvau.video.probe"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.stderr, env=env, text=True)

    def ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
        """The server's answer, or None when it died or hung (then it is killed)."""
        try:
            self.proc.stdin.write(json.dumps({"request": request, "timeout_s": timeout_s}) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s + _SERVER_GRACE_S)
            line = self.proc.stdout.readline() if ready else ""
        except (BrokenPipeError, OSError, ValueError):
            line = ""
        if not line:
            self.close(wait_s=0)
            return None
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def last_words(self) -> str:
        self.stderr.seek(0)
        return " | ".join(self.stderr.read().decode(errors="replace").strip().splitlines()[-3:])[:300]

    def close(self, wait_s: float = 5.0) -> None:
        """End of input, then up to ``wait_s`` for the server to exit before it is killed."""
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_servers = threading.local()  # ingestion probes from a thread pool: one server per thread, no locking


def stop_server() -> None:
    """Stop the calling thread's probe server, if any (the next probe starts a new one)."""
    server = getattr(_servers, "server", None)
    if server is not None:
        server.close()
        _servers.server = None


def _run_child(request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    server = getattr(_servers, "server", None)
    if server is None or not server.alive():
        server = _servers.server = _Server()
    try:
        answer = server.ask(request, timeout_s)
    except Exception:
        server.close(wait_s=0)
        raise
    if answer is None:
        raise ProbeError("crashed", f"the probe server died or stopped answering (exit code {server.proc.returncode}); "
                                    f"a new one starts at the next video; {server.last_words()}")
    if not answer["ok"]:
        raise ProbeError(answer["reason"], answer.get("detail", ""))
    return answer


def probe(path: str | os.PathLike, timeout_s: float = 30.0) -> VideoInfo:
    """Probe ``path`` in a subprocess; :class:`VideoInfo` or :class:`ProbeError`."""
    path = str(path)
    precheck(path)
    answer = _run_child({"op": "probe", "path": path}, timeout_s)
    return VideoInfo(**answer["info"])


@dataclass
class SampleResult:
    info: VideoInfo
    frames: int
    backend: str
    height: int
    width: int
    fallback_reason: str | None = None


def probe_and_sample(
    path: str | os.PathLike,
    policy: VideoConfig,
    out_path: str | os.PathLike,
    timeout_s: float | None = None,
    sha256: str | None = None,
) -> SampleResult:
    """Probe, sample and write the frame-cache file ``out_path``, all in one killable subprocess.

    The child writes a temporary file next to ``out_path``; it is renamed only on success, so a
    killed or failed child never leaves a half-written cache entry behind.
    """
    path, out_path = str(path), Path(out_path)
    precheck(path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        request = {"op": "sample", "path": path, "out": str(tmp), "sha256": sha256,
                   "policy": policy.model_dump(mode="json")}
        answer = _run_child(request, policy.probe_timeout_s if timeout_s is None else timeout_s)
    return SampleResult(
        info=VideoInfo(**answer["info"]), frames=answer["frames"], backend=answer["backend"],
        height=answer["height"], width=answer["width"], fallback_reason=answer.get("fallback_reason"),
    )


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    """What the child reports for ``request``: never raises."""
    try:
        if request["op"] == "probe":
            info, _ = probe_inprocess(request["path"])
            return {"ok": True, "info": info.to_dict()}
        if request["op"] == "sample":
            policy = SimpleNamespace(**request["policy"])  # validated by the parent (a VideoConfig dump)
            return {"ok": True, **sample_inprocess(request["path"], policy, request["out"], request.get("sha256"))}
        return {"ok": False, "reason": "crashed", "detail": f"unknown op {request['op']!r}"}
    except ProbeError as e:
        return {"ok": False, "reason": e.reason, "detail": e.detail}
    except Exception as e:  # anything else (a library failing on hostile bytes, or a bug): keep the type
        return {"ok": False, "reason": "error", "detail": f"{type(e).__name__}: {_short(e)}"}


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies, so a child whose server was killed does
    not decode on, untimed (elsewhere the child outlives the server until it finishes)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _fork_child(request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Fork a child to answer ``request``; kill it after ``timeout_s``. Runs in the server."""
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile() as stderr:
        pid = os.fork()
        if pid == 0:  # the child: answer through the pipe, native output into the temporary file
            code = 1
            try:
                _die_with_parent()
                os.close(read_end)
                os.dup2(stderr.fileno(), 1)  # the server's stdout carries answers only
                os.dup2(stderr.fileno(), 2)
                with os.fdopen(write_end, "w") as out:
                    out.write(json.dumps(_answer(request)))
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        chunks, deadline = [], time.monotonic() + timeout_s
        with os.fdopen(read_end, "rb") as answer_pipe:
            while True:  # until the child closes its end (it exited) or the time is up
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([answer_pipe], [], [], left)[0]:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    return {"ok": False, "reason": "timeout", "detail": f"no answer within {timeout_s:g} s; child killed"}
                chunk = os.read(answer_pipe.fileno(), 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        if chunks:
            return json.loads(b"".join(chunks))
        stderr.seek(0)
        tail = " | ".join(stderr.read().decode(errors="replace").strip().splitlines()[-3:])[:300]
    if os.WIFSIGNALED(status):
        return {"ok": False, "reason": "crashed", "detail": f"killed by signal {os.WTERMSIG(status)}; {tail}"}
    return {"ok": False, "reason": "crashed", "detail": f"exit code {os.waitstatus_to_exitcode(status)} without a result; {tail}"}


def _serve() -> int:
    """The fork server's loop: import once, then fork a child per request line until stdin closes."""
    import importlib

    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # decord has no wheel on some platforms; decoding falls back to PyAV
            pass
    import av

    av.logging.set_level(av.logging.PANIC)  # the parent reports reasons; FFmpeg chatter is noise
    for line in sys.stdin:
        message = json.loads(line)
        sys.stdout.write(json.dumps(_fork_child(message["request"], float(message["timeout_s"]))) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(_serve())
