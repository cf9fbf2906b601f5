"""Child program: serves one GGUF model with llama.cpp's HTTP server through xllamacpp.

Takes the ``llama-server`` flags that ``modelyard.engines.llamacpp.runner.server_args`` builds (and
the common ones a catalog's ``extra_args`` may add), so the same argv runs this program or a
real ``llama-server`` binary, and its ``--api-key`` from ``LLAMA_API_KEY`` as llama-server
does. Runs until SIGTERM or SIGKILL, or until the gateway dies.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from modelyard.workers import flags, lifeline


def build_params(argv: list[str]) -> Any:
    """``CommonParams`` from llama-server flags (the table in ``modelyard.workers.flags``)."""
    import xllamacpp as x

    p = x.CommonParams()
    key = os.environ.get("LLAMA_API_KEY")
    if key:
        p.api_keys = [key]
    for flag, value in flags.parse(argv):
        owner, _, attr = flag.path.rpartition(".")
        target = _resolve(p, owner)
        setattr(target, attr, _value(x, target, attr, flag, value))
    return p


def _resolve(root: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        root = getattr(root, part)
    return root


def _value(x: Any, target: Any, attr: str, flag: flags.Flag, value: str | None) -> Any:
    assert value is not None or not flag.takes_value
    match flag.kind:
        case "int":
            return int(value or 0)
        case "float":
            return float(value or 0)
        case "str":
            return value
        case "on":
            return True
        case "off":
            return False
        case "list":
            return [value]
        case "add":
            return {*getattr(target, attr), value}
        case "file":
            with open(value or "", encoding="utf-8") as f:
                return f.read()
        case "floats":
            numbers = [float(v) for v in (value or "").split(",")]
            length = len(getattr(target, attr))
            return numbers + [0.0] * (length - len(numbers))
        case "ggml_type":
            return getattr(x.ggml_type, f"GGML_TYPE_{(value or '').upper()}")
        case "choice":
            enum, member = flag.choices[value or ""].split(".")
            return getattr(getattr(x, enum), member)
        case "rerank":
            target.pooling_type = x.llama_pooling_type.LLAMA_POOLING_TYPE_RANK
            return True
    raise AssertionError(flag.kind)


def main(argv: list[str]) -> None:
    lifeline.hold()
    import xllamacpp as x

    params = build_params(argv)
    # SIGTERM's default action ends the process at once, which is what a stop wants: the
    # engine holds no state worth flushing.
    server = x.Server(params)
    print(f"modelyard worker: serving on {server.listening_address}", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main(sys.argv[1:])
