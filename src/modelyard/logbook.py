"""Log files: the gateway's own (``<home>/logs/gateway.log``) and one per model runner
(``<home>/logs/<model>.log``), each rotated by size (``name.log.1`` … ``name.log.N``).

- ``setup`` configures the gateway's logging: text or JSON lines (with the request id of
  the request being served), to stderr and to the rotating file.
- ``RotatingLog`` is what a runner's output is written through (``runners.process`` pumps
  the child's stdout and stderr into it, so that a runner that runs for weeks stays within
  the cap too).
- ``tail`` and ``follow`` read a log for ``modelyard logs`` and ``GET /api/logs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

GATEWAY = "gateway"
"""The gateway's own log (``<home>/logs/gateway.log``)."""

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
"""The id of the request the current task serves (set by the app's ``RequestId``)."""

_FOLLOW_POLL = 0.25


@dataclass(frozen=True)
class Rotation:
    max_bytes: int = 16 * 1024**2
    files: int = 3
    """Rotated files kept besides the current one."""


DEFAULT_ROTATION = Rotation()


def log_path(log_dir: Path, name: str) -> Path:
    """The log of a model (or of the gateway: ``GATEWAY``)."""
    return log_dir / f"{name.replace('/', '_')}.log"


def rotate(path: Path, files: int) -> None:
    """``path`` → ``path.1`` → … → ``path.<files>`` (the oldest is dropped)."""
    for i in range(files - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    if path.exists():
        path.replace(path.with_name(f"{path.name}.1"))


class RotatingLog:
    """Appends bytes to ``path``, rotating it once it would grow past the cap."""

    def __init__(self, path: Path, rotation: Rotation) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._rotation = rotation
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        if self._size and self._size + len(data) > self._rotation.max_bytes:
            os.close(self._fd)
            rotate(self._path, self._rotation.files)
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._size = 0
        os.write(self._fd, data)
        self._size += len(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


# ---- the gateway's logging ------------------------------------------------------------------


class _Seconds:
    """A time's text to the second, made once a second (a log line a request reads it): the
    cached pair is swapped whole, so a thread never reads one second's text for another."""

    def __init__(self, render: Callable[[float], str]) -> None:
        self._render = render
        self._cached: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        cached = self._cached
        if cached[0] != second:
            cached = (second, self._render(created))
            self._cached = cached
        return cached[1]


def _msecs(created: float) -> int:
    """The milliseconds of a time, as ``LogRecord.msecs`` holds them."""
    return int((created - int(created)) * 1000)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The gateway's log lines, as text."""


class TextFormatter(logging.Formatter):
    """logging's text format (``asctime`` in local time, with milliseconds)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._seconds = _Seconds(
            lambda created: time.strftime(self.default_time_format, self.converter(created))
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._seconds(record.created)},{int(record.msecs):03d}"  # as logging writes it

    def info_line(self, name: str, message: str, created: float) -> str | None:
        """What ``format`` makes of an INFO record of ``name`` (``None``: another format)."""
        if self._fmt != TEXT_FORMAT:
            return None
        return f"{self._seconds(created)},{_msecs(created):03d} INFO {name}: {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and the
    ``extra`` fields a record carries (the access log's)."""

    _PLAIN = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    _seconds = _Seconds(lambda created: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)))

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": f"{self._seconds(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            data["request_id"] = rid
        for key, value in vars(record).items():
            if key not in self._PLAIN and key not in data:
                to_dict = getattr(value, "to_dict", None)
                data[key] = to_dict() if callable(to_dict) else value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class Sink(logging.Handler):
    """Formats each record once and writes it to stderr and the rotating ``gateway.log``.

    Lines are buffered and written together by a thread every ``FLUSH_INTERVAL``, one write
    per output, rather than two system calls per request (the access log); a warning or an
    error wakes the thread at once, and the end of the process flushes. A SIGKILL can lose
    the last ``FLUSH_INTERVAL`` of lines.
    """

    FLUSH_INTERVAL = 0.2

    def __init__(self, outputs: list[Callable[[bytes], object]]) -> None:
        super().__init__()
        self._outputs = outputs
        self._buffer: list[str] = []
        self._flusher = threading.Thread(target=self._flush_loop, name="log flush", daemon=True)
        self._wake = threading.Event()
        self._io = threading.Lock()
        self._closed = False
        self._flusher.start()

    def add(self, line: str) -> None:
        """A line formatted already, below a warning (``emit`` without a record)."""
        with self.lock or contextlib.nullcontext():
            self._append(line, urgent=False)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        # The caller (``handle``) holds ``self.lock``.
        self._append(line, urgent=record.levelno >= logging.WARNING)

    def _append(self, line: str, *, urgent: bool) -> None:
        self._buffer.append(line)
        if urgent or len(self._buffer) >= 1000:
            self._wake.set()

    def flush(self) -> None:
        # Writes never hold ``self.lock``: a request that logs never waits for a write.
        with self._io:
            with self.lock or contextlib.nullcontext():
                lines, self._buffer = self._buffer, []
            if not lines:
                return
            data = "".join(lines).encode("utf-8", errors="replace")
            for write in self._outputs:
                with contextlib.suppress(OSError, ValueError):
                    write(data)

    def _flush_loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.FLUSH_INTERVAL)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self.flush()
        super().close()


class _Line(logging.LogRecord):
    """A record of ``info``'s making: what a ``LogRecord`` holds, for a line that names no
    caller, thread or process (``setup`` turns those off), the constant parts on the class."""

    args = None
    levelno = logging.INFO
    pathname = filename = module = ""
    exc_info = exc_text = stack_info = None
    funcName = None  # type: ignore[assignment]  # as logging leaves it without a caller
    lineno = 0
    thread = threadName = process = processName = None

    def __init__(self, name: str, message: str, created: float, extra: dict[str, object]) -> None:
        self.__dict__.update(extra)
        self.name = name
        self.msg = message
        self.levelname = "INFO"  # read from the record's own ``__dict__`` by ``%``-formats
        self.created = created
        self.msecs = _msecs(created) + 0.0
        self.relativeCreated = (created - logging._startTime) * 1000  # type: ignore[attr-defined]


_sink: Sink | None = None
"""The gateway's handler, once ``setup`` made it."""


def info(
    logger: logging.Logger, message: str, *, created: float | None = None, **extra: object
) -> None:
    """``logger.info(message, extra=extra)``, for the lines a request writes (the access
    log). Where the line would go to the gateway's ``Sink`` alone, as ``setup`` leaves it
    (no other handler or filter on its way), it goes there straight: no ``LogRecord`` made
    in full and no walk over the loggers: in the gateway, 28 µs of a request's CPU before, 14
    now. Anywhere else (another handler added, in tests too) it goes
    through ``logging`` as usual. ``created``: the line's time, when not now (``logging``'s
    own way takes the time it is called)."""
    sink = _sink
    if sink is None or not _only_to(sink, logger):
        logger.info(message, extra=extra)
        return
    if not (logger.isEnabledFor(logging.INFO) and sink.level <= logging.INFO):
        return
    formatter = sink.formatter
    if isinstance(formatter, TextFormatter):
        line = formatter.info_line(logger.name, message, created or time.time())
        if line is not None:
            sink.add(line + "\n")
            return
    with sink.lock or contextlib.nullcontext():
        sink.emit(_Line(logger.name, message, created or time.time(), extra))


def _only_to(sink: Sink, logger: logging.Logger) -> bool:
    """Whether a record of ``logger`` reaches ``sink`` and nothing else (no filter either)."""
    at: logging.Logger | None = logger
    while at is not None:
        if at.filters:
            return False
        if at.handlers:
            return at.handlers == [sink] and at.parent is None and not sink.filters
        if not at.propagate:
            return False
        at = at.parent
    return False


def setup(level: str, log_format: str, log_dir: Path | None, rotation: Rotation) -> None:
    """Logs at ``level`` to stderr and, with ``log_dir``, to ``gateway.log`` there."""
    formatter: logging.Formatter = (
        JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT)
    )
    stderr = sys.stderr

    def to_stderr(data: bytes) -> None:
        raw = getattr(stderr, "buffer", None)
        if raw is not None:
            raw.write(data)
        else:
            stderr.write(data.decode("utf-8", errors="replace"))
        stderr.flush()

    outputs: list[Callable[[bytes], object]] = [to_stderr]
    if log_dir is not None:
        outputs.append(RotatingLog(log_path(log_dir, GATEWAY), rotation).write)
    sink = Sink(outputs)
    sink.setFormatter(formatter)
    global _sink
    _sink = sink
    # No format of ours names the caller, thread or process: not looking them up makes a
    # log line (one per request in the access log) several microseconds cheaper.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.basicConfig(level=level.upper(), handlers=[sink], force=True)
    # uvicorn's own loggers write through ours (same format, same file).
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # At debug level these write every statement with its parameters (key and password
    # hashes among them) into the log: never.
    for name in ("aiosqlite", "asyncpg", "sqlalchemy.engine"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---- reading ------------------------------------------------------------------------------


def tail(path: Path, lines: int, chunk: int = 64 * 1024) -> tuple[list[str], int]:
    """The last ``lines`` lines of ``path`` and the offset of its end."""
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        pos, data = end, b""
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(chunk, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    text = data.decode("utf-8", errors="replace").splitlines()
    return (text[-lines:] if lines > 0 else []), end


async def follow(path: Path, offset: int, stop: asyncio.Event) -> AsyncIterator[str]:
    """Lines appended to ``path`` from ``offset`` on, as they come, until ``stop`` is set.
    Like ``tail -F``: when the file is rotated, the rest of the old one is read first, then
    its successor."""
    reader = _Reader(path, offset)
    try:
        while not stop.is_set():
            lines = reader.poll()
            for line in lines:
                yield line
            if not lines:
                await asyncio.sleep(_FOLLOW_POLL)
    finally:
        reader.close()


class _Reader:
    def __init__(self, path: Path, offset: int) -> None:
        self._path = path
        self._file: BinaryIO | None = None
        self._pending = b""
        self._open(offset)

    def _open(self, offset: int) -> None:
        try:
            self._file = self._path.open("rb")
        except FileNotFoundError:
            self._file = None
            return
        if offset > os.fstat(self._file.fileno()).st_size:
            offset = 0  # truncated since
        self._file.seek(offset)

    def poll(self) -> list[str]:
        """The complete lines written since the last poll."""
        data = b""
        if self._file is not None:
            data = self._file.read(1024 * 1024)
            if not data and self._replaced():
                self._file.close()
                self._open(0)  # the old file is read to its end: on to the new one
                return self.poll()
        elif self._path.exists():
            self._open(0)
            return self.poll()
        *complete, self._pending = (self._pending + data).split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in complete]

    def _replaced(self) -> bool:
        assert self._file is not None
        try:
            return self._path.stat().st_ino != os.fstat(self._file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
