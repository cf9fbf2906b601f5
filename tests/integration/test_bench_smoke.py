"""The benchmark harness in smoke mode (tiny counts, one round): it runs every scenario it
has end to end and writes every column, so it cannot rot between full runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

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
    scenarios = [f"B{i}" for i in range(1, 14)]
    assert [r["scenario"] for r in report["results"]] == scenarios
    assert report["machine"]["cpus"] >= 1
    assert set(report["peers"]) == {"litellm", "llama-cpp-python", "infinity"}
    for scenario in report["results"]:
        assert scenario["rows"], scenario["scenario"]
        for row in scenario["rows"]:
            assert set(row) == COLUMNS, row
            assert 0 <= row["value"] < math.inf, row
            assert row["peer"] is None or 0 < row["peer"] < math.inf, row
            assert row["met"] in (True, False, None), row
            if row["target"].startswith("not judged"):
                # A peer's side is missing: said so, never silently skipped.
                assert row["target"] == "not judged: peers off (smoke mode)", row
                assert (row["peer"], row["met"]) == (None, None), row
            else:
                assert math.isfinite(row["ratio"]), row
    judged_by_peer = [
        r["label"] for s in report["results"] for r in s["rows"] if "not judged" in r["target"]
    ]
    assert len(judged_by_peer) >= 5  # B1, B2 (LiteLLM), B5 (llama-cpp-python), B10 (Infinity)
    # The printed table has the same lines.
    for scenario in report["results"]:
        for row in scenario["rows"]:
            assert row["label"] in result.stdout


def smoke(script: str, *args: str) -> str:
    """``bench/<script> --smoke``: its output, once it exited 0."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT / "bench",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.timeout(300)
def test_bench_streams_smoke_serves_every_stream_and_every_queued_request() -> None:
    """B15 (``bench/streams.py``) in smoke mode: 32 streams at once, 8 requests queued."""
    out = smoke("streams.py")
    assert "failed streams: through 0, direct 0" in out, out
    assert "refused 0" in out, out
    assert "gateway RSS" in out


@pytest.mark.timeout(300)
def test_bench_soak_smoke_keeps_the_books_and_lets_every_model_go() -> None:
    """B16 (``bench/soak.py``) in smoke mode: 50 s of mixed traffic over the four dialects
    with keys on, two runner kills; ledger rows = requests, every model idles out."""
    out = smoke("soak.py")
    assert "verdict: all held" in out, out
    assert "other failures 0" in out, out
    assert "idle-out: every model unloaded" in out, out


@pytest.mark.timeout(300)
def test_bench_catalog_smoke_measures_starts_listings_reloads_and_the_page() -> None:
    """B14 (``bench/catalog.py``) in smoke mode: 50 models, a file added and removed."""
    out = smoke("catalog.py", "--page")
    assert "catalog of 50 models" in out
    labels = ("next starts: s to /health", "/api/tags: median ms", "reload, a file added",
              "reload, a file removed", "Models page: ms to a search")  # fmt: skip
    for label in labels:
        assert label in out, out


@pytest.mark.timeout(300)
def test_bench_gateways_smoke_serves_through_a_follower_and_survives_the_leader() -> None:
    """``bench/gateways.py`` in smoke mode: two gateways on PostgreSQL, the leader killed."""
    out = smoke("gateways.py")
    for label in ("added p50 through the follower (ms)", "leader SIGKILLed to the follower"):
        assert label in out, out
