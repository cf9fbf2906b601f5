"""MkDocs hooks: the README is the site's home page (one text, not two), its links into
``docs/`` rewritten to the pages beside it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

README = Path(__file__).resolve().parents[1] / "README.md"


def on_files(files: Files, config: Any) -> Files:
    text = re.sub(r"\]\(docs/", "](", README.read_text())
    files.append(File.generated(config, "index.md", content=text))
    return files
