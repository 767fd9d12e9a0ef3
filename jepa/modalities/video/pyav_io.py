"""Reading video bytes with PyAV: the probe (frame count, size, timestamps) and frames by number.

This module imports only the standard library, NumPy and PyAV, so it is also the whole program of
the decoder child process (:mod:`jepa.modalities.video.decoder_process`): run as a script it
answers requests on stdin/stdout (:func:`serve`). Frames are numbered in decode (= presentation)
order, as the authors' decord reader does.

Wire format (both directions): a 4-byte big-endian header length, the header as UTF-8 JSON, an
8-byte big-endian payload length, the payload. Requests: ``{"op": "probe"}`` or ``{"op": "read",
"num_frames", "height", "width", "pts", "indices"}``, payload the encoded video. Answers: ``{"ok":
true, ...}`` with the probe's fields, or the frames' ``shape`` and their raw RGB bytes as payload;
``{"ok": false, "error": "Type: message"}`` when PyAV raised anything. Once started, the child sends
``{"ok": true, "ready": true}``. Nothing is pickled.
"""

import io
import json
import os
import signal
import struct
import sys
from typing import Any, BinaryIO, Sequence

if __name__ == "__main__" and sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # run as the child's program: its neighbours (config.py, ...) are no top-level modules

import av  # noqa: E402
import numpy as np  # noqa: E402
from av.video.reformatter import VideoReformatter  # noqa: E402

from jepa.errors import DataError

#: FFmpeg decoder threads per video; data-loader workers already decode in parallel.
DECODE_THREADS = 1
#: Most pixels a frame may have: ``jepa.vision.pixels.MAX_PIXELS`` (this module imports no ``jepa``:
#: a test pins the two equal).
MAX_FRAME_PIXELS = 89_478_485


def open_container(data: bytes) -> Any:
    """An opened PyAV container of ``data`` with one slice-threaded decoder thread.

    Raises:
        ValueError: the file has no video stream (PyAV's own errors pass through).
    """
    container = av.open(io.BytesIO(data), mode="r")
    if not container.streams.video:
        container.close()
        raise DataError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"
    stream.thread_count = DECODE_THREADS
    return container


def probe(data: bytes, max_pixels: int = MAX_FRAME_PIXELS) -> dict[str, Any]:
    """Decode every frame of ``data`` once (without converting to RGB).

    Args:
        data: the encoded video.
        max_pixels: most pixels a frame may have. The size the stream declares is checked before any
            frame is decoded, and every decoded frame's size too (a stream may change size midway).

    Returns:
        ``num_frames``, ``height`` and ``width`` (of the first frame; 0 when there is none), and
        ``pts``: the presentation timestamps in decode order, or None when they cannot be used
        to seek (missing, or not strictly increasing).

    Raises:
        ValueError: a frame (or the declared size) has more than ``max_pixels`` pixels.
    """
    pts: list[Any] = []
    size = (0, 0)
    with open_container(data) as container:
        stream = container.streams.video[0]
        _check_frame_size(stream.codec_context.height or 0, stream.codec_context.width or 0, max_pixels, "declares")
        for frame in container.decode(stream):
            _check_frame_size(frame.height, frame.width, max_pixels, "has")
            if not pts:
                size = (frame.height, frame.width)
            pts.append(frame.pts)
    usable = all(p is not None for p in pts) and all(a < b for a, b in zip(pts, pts[1:]))
    return {"num_frames": len(pts), "height": size[0], "width": size[1], "pts": pts if usable else None}


def _check_frame_size(height: int, width: int, max_pixels: int, verb: str) -> None:
    if height * width > max_pixels:
        raise DataError(f"the video {verb} {width}x{height} = {height * width:,} pixels a frame, more than the "
                         f"{max_pixels:,} allowed")


def read(data: bytes, num_frames: int, height: int, width: int, pts: Sequence[int] | None,
         indices: Sequence[int]) -> np.ndarray:
    """Frames ``indices`` of a probed video: seek to the key frame before the first one and decode
    up to the last; when seeking does not land where the timestamps say (containers without an
    index, a broken index), decode from the start in decode order, the probe's own path.

    Args:
        data: the encoded video; num_frames, height, width, pts: what :func:`probe` returned.
        indices: frame numbers in ``[0, num_frames)``, any order, repeats allowed.

    Returns:
        (F, height, width, 3) uint8 RGB frames in the order of ``indices``.
    """
    wanted = sorted(set(int(i) for i in indices))
    if not wanted or wanted[0] < 0 or wanted[-1] >= num_frames:
        raise IndexError(f"frames {wanted[:1]}..{wanted[-1:]} outside 0..{num_frames - 1}")
    frames = None
    if pts is not None and wanted[0] > 0:
        try:
            frames = read_seeking(data, height, width, pts, wanted)
        except av.FFmpegError:  # e.g. a broken index: the in-order path below is the probed one
            frames = None
    if frames is None:
        frames = read_in_order(data, height, width, wanted)
    return np.stack([frames[i] for i in indices])


def _rgb(frame: Any, height: int, width: int, reformatter: VideoReformatter) -> np.ndarray:
    """(H, W, 3) uint8 RGB at the probed size. One reformatter per video keeps its scaler context:
    ``frame.to_ndarray`` builds a new one per frame, ~5x slower on small frames."""
    return reformatter.reformat(frame, width=width, height=height, format="rgb24").to_ndarray()


def read_seeking(data: bytes, height: int, width: int, pts: Sequence[int],
                 wanted: list[int]) -> dict[int, np.ndarray] | None:
    """Seek to the key frame before ``wanted[0]`` (sorted) and decode to ``wanted[-1]``; None if it misses."""
    index_of = {p: i for i, p in enumerate(pts)}
    todo = set(wanted)
    last_pts = pts[wanted[-1]]
    out: dict[int, np.ndarray] = {}
    reformatter = VideoReformatter()
    with open_container(data) as container:
        stream = container.streams.video[0]
        container.seek(pts[wanted[0]], stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            i = index_of.get(frame.pts)
            if i in todo:
                out[i] = _rgb(frame, height, width, reformatter)
                todo.discard(i)
            if frame.pts >= last_pts:
                break
    return out if not todo else None


def read_in_order(data: bytes, height: int, width: int, wanted: list[int]) -> dict[int, np.ndarray]:
    """Decode from the start, numbering frames in decode order (the probe's path); ``wanted`` sorted."""
    todo = set(wanted)
    out: dict[int, np.ndarray] = {}
    reformatter = VideoReformatter()
    with open_container(data) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i in todo:
                out[i] = _rgb(frame, height, width, reformatter)
            if i >= wanted[-1]:
                break
    if len(out) != len(todo):
        raise RuntimeError(f"decoded {len(out)} of the {len(todo)} frames the probe saw")
    return out


# ------------------------------------------------------------------------------------ wire format
def write_message(stream: BinaryIO, header: dict[str, Any], payload: bytes | memoryview = b"") -> None:
    """One message: header length, JSON header, payload length, payload."""
    head = json.dumps(header).encode()
    stream.write(struct.pack(">I", len(head)) + head + struct.pack(">Q", len(payload)))
    stream.write(payload)
    stream.flush()


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_message(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """The next message of ``stream``, or None at its end (a closed pipe or a dead peer)."""
    size = _read_exactly(stream, 4)
    head = None if size is None else _read_exactly(stream, struct.unpack(">I", size)[0])
    length = None if head is None else _read_exactly(stream, 8)
    payload = None if length is None else _read_exactly(stream, struct.unpack(">Q", length)[0])
    if payload is None:
        return None
    return json.loads(head), payload  # type: ignore[arg-type]


def answer(header: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    """The answer to one request (never raises: PyAV's errors of any type become ``ok: false``)."""
    try:
        if header["op"] == "probe":
            return {"ok": True, **probe(data)}, b""
        if header["op"] == "read":
            frames = read(data, header["num_frames"], header["height"], header["width"], header["pts"],
                          header["indices"])
            return {"ok": True, "shape": list(frames.shape)}, frames.tobytes()
        return {"ok": False, "error": f"ValueError: unknown request {header['op']!r}"}, b""
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raises is the file's problem, reported
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, b""


def serve(timeout_s: float, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The child's loop: answer requests until stdin ends (the parent closed it or died).

    SIGTERM and SIGINT are ignored (a preempted job signals the whole process group; the parent
    decides when this process ends); an alarm ends a request that runs longer than ``timeout_s``
    even when the parent is gone.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    write_message(stdout, {"ok": True, "ready": True})
    while True:
        message = read_message(stdin)
        if message is None:
            return
        signal.alarm(max(1, int(timeout_s) + 1))
        header, payload = answer(*message)
        signal.alarm(0)
        try:
            write_message(stdout, header, payload)
        except BrokenPipeError:
            return


if __name__ == "__main__":
    serve(float(sys.argv[1]) if len(sys.argv) > 1 else 120.0, sys.stdin.buffer, sys.stdout.buffer)
