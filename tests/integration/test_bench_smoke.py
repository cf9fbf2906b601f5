"""The benchmark harness in smoke mode (tiny counts, one round): it runs every scenario it
has end to end and writes every column, so it cannot rot between full runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = {"label", "value", "peer", "ratio", "target", "met"}


@pytest.mark.timeout(600)
def test_bench_smoke_runs_every_scenario(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=580,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (written,) = tmp_path.glob("bench-*.json")
    report = json.loads(written.read_text())
    scenarios = ["B1", "B2", "B3", "B4", "B8", "B9", "B11", "B12"]
    assert [r["scenario"] for r in report["results"]] == scenarios
    assert report["machine"]["cpus"] >= 1
    for scenario in report["results"]:
        assert scenario["rows"], scenario["scenario"]
        for row in scenario["rows"]:
            assert set(row) == COLUMNS, row
            assert 0 <= row["value"] < math.inf, row
            assert row["peer"] is None or 0 < row["peer"] < math.inf, row
            assert math.isfinite(row["ratio"]), row
            assert row["met"] in (True, False, None), row
    # The printed table has the same lines.
    for scenario in report["results"]:
        for row in scenario["rows"]:
            assert row["label"] in result.stdout
