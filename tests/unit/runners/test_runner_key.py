"""A runner's key goes on command lines (``--api-key {key}`` of a command entry): it must
never read as a flag."""

from __future__ import annotations

import argparse

from modelyard.runners.process import runner_key


def test_a_runner_key_never_reads_as_a_flag() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-key", required=True)
    keys = {runner_key() for _ in range(2000)}
    assert len(keys) == 2000
    for key in keys:
        assert len(key) == 48
        assert int(key, 16) >= 0  # hex: never a leading "-"
        assert parser.parse_args(["--api-key", key]).api_key == key
