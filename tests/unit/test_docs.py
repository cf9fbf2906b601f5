"""The documentation site: it builds with ``--strict`` (a broken link or anchor fails), every
page is in its navigation, and no page fetches anything from elsewhere (it works offline)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_docs_build_strict_with_every_page_and_nothing_from_elsewhere(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    listed = {next(iter(item.values())) if isinstance(item, dict) else item
              for item in config["nav"]}  # fmt: skip
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} | {"index.md"}
    assert listed == pages
    home = (site / "index.html").read_text()
    assert "A five-minute tour" in home  # the README is the home page
    assert 'href="install.html"' in home or 'href="install/"' in home  # its docs/ links work
    outside = re.compile(r'<(?:script|link|img)[^>]*(?:src|href)="(?:https?:)?//', re.I)
    for page in site.rglob("*.html"):
        assert not outside.search(page.read_text()), page
