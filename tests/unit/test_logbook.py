"""Log files: rotation by size, tail, tail -F across a rotation, the buffered sink, JSON lines."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest

from modelyard import logbook
from modelyard.logbook import (
    JsonFormatter,
    RotatingLog,
    Rotation,
    Sink,
    TextFormatter,
    follow,
    tail,
)


def test_rotating_log_keeps_the_cap_and_the_number_of_files(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    log = RotatingLog(path, Rotation(max_bytes=100, files=2))
    for i in range(50):
        log.write(f"line {i:03d} {'x' * 20}\n".encode())
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.log", "m.log.1", "m.log.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 100
    newest = path.read_text().splitlines()[-1]
    assert newest.startswith("line 049")
    # The files hold the newest lines, in order, with nothing lost between them.
    kept = [
        line
        for name in ("m.log.2", "m.log.1", "m.log")
        for line in (tmp_path / name).read_text().splitlines()
    ]
    numbers = [int(line.split()[1]) for line in kept]
    assert numbers == list(range(numbers[0], 50))


def test_tail_reads_the_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    path.write_text("".join(f"{i}\n" for i in range(100_000)))
    lines, end = tail(path, 3, chunk=4096)
    assert lines == ["99997", "99998", "99999"]
    assert end == path.stat().st_size
    assert tail(path, 0)[0] == []


async def test_follow_reads_across_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    log = RotatingLog(path, Rotation(max_bytes=60, files=3))
    stop = asyncio.Event()
    seen: list[str] = []

    async def reader() -> None:
        async for line in follow(path, 0, stop):
            seen.append(line)
            if line == "line 19":
                return

    task = asyncio.create_task(reader())
    for i in range(20):
        log.write(f"line {i}\n".encode())  # rotates every few lines
        if i % 7 == 0:
            await asyncio.sleep(0.3)  # sometimes the reader polls in between, sometimes not
    log.close()
    await asyncio.wait_for(task, 5)  # the last line came
    stop.set()
    # Lines already rotated away before the reader saw the file may be missed; what it read
    # after its first look at each file comes whole and in order.
    numbers = [int(line.split()[1]) for line in seen]
    assert numbers == sorted(numbers)
    assert len(numbers) == len(set(numbers))


def test_sink_buffers_writes_once_per_output_and_flushes_warnings_at_once() -> None:
    first: list[bytes] = []
    second: list[bytes] = []
    sink = Sink([first.append, second.append])
    sink.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test.sink")
    logger.propagate = False
    logger.addHandler(sink)
    logger.setLevel(logging.INFO)
    try:
        for i in range(3):
            logger.info("info %d", i)
        logger.warning("careful")
        deadline = time.monotonic() + 2
        while not first and time.monotonic() < deadline:
            time.sleep(0.01)
        assert b"".join(first) == b"INFO info 0\nINFO info 1\nINFO info 2\nWARNING careful\n"
        assert first == second
        assert len(first) <= 2  # written together, not line by line
        logger.info("last")
    finally:
        logger.removeHandler(sink)
        sink.close()
    assert b"".join(first).endswith(b"INFO last\n")  # closing flushes


def test_json_formatter_writes_one_object_with_extras() -> None:
    class Fields:
        def to_dict(self) -> dict[str, int]:
            return {"status": 200}

    record = logging.LogRecord("modelyard.access", logging.INFO, "", 0, "POST %s", ("/x",), None)
    record.access = Fields()
    data = json.loads(JsonFormatter().format(record))
    assert (data["level"], data["logger"], data["message"]) == (
        "info",
        "modelyard.access",
        "POST /x",
    )
    assert data["access"] == {"status": 200}
    assert data["time"].endswith("Z")


def test_log_lines_are_stamped_with_their_own_time() -> None:
    """The time's text is made once a second: each line still carries its own time, to the
    millisecond, as logging's own formatters write it."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    ours, theirs, json_lines = TextFormatter(fmt), logging.Formatter(fmt), JsonFormatter()
    start = 1_764_806_400.0  # a second's start
    for created in (start + 0.001, start + 0.999, start + 1.0, start + 1.5, start - 3600.25):
        record = logging.LogRecord("modelyard.access", logging.INFO, "", 0, "hi", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == theirs.format(record)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        assert json.loads(json_lines.format(record))["time"] == f"{stamp}.{int(record.msecs):03d}Z"


def test_info_writes_what_logging_would_and_gives_other_handlers_their_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``logbook.info`` (the access log's way) writes the line ``logging`` would, in text and
    in JSON; with another handler on the way (as tests add), the record goes through
    ``logging`` and that handler gets it too."""

    class Fields:
        def to_dict(self) -> dict[str, int]:
            return {"status": 200}

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    access = logging.getLogger("modelyard.access")
    created = 1_764_806_400.25
    monkeypatch.setattr(logbook, "_sink", None)
    monkeypatch.setattr(logbook.time, "time", lambda: created)
    try:
        for fmt in ("text", "json"):
            logbook.setup("info", fmt, tmp_path / fmt, logbook.DEFAULT_ROTATION)
            sink = logbook._sink
            assert sink is not None
            assert sink.formatter is not None
            record = logging.LogRecord(access.name, logging.INFO, "", 0, "POST /x 200", None, None)
            record.created, record.msecs = created, 250.0
            record.access = Fields()
            expected = sink.formatter.format(record)
            with monkeypatch.context() as straight:  # the line goes to the sink, not via logging
                straight.setattr(access, "info", lambda *a, **k: pytest.fail("went via logging"))
                logbook.info(access, "POST /x 200", access=Fields())

            seen: list[logging.LogRecord] = []
            other = logging.Handler()
            other.emit = seen.append  # type: ignore[method-assign]
            access.addHandler(other)
            try:
                logbook.info(access, "POST /y 404", access=Fields())
            finally:
                access.removeHandler(other)
            sink.flush()
            lines = (tmp_path / fmt / "gateway.log").read_text().splitlines()
            assert lines[0] == expected
            assert [r.getMessage() for r in seen] == ["POST /y 404"]
            assert isinstance(seen[0].access, Fields)  # type: ignore[attr-defined]
            assert "POST /y 404" in lines[1]
            sink.close()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
