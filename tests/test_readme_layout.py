"""The README's Layout table names only paths that exist (it went stale once: `build/` after the
builder moved to `data_pipeline/builder/`)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATH_TOKEN = re.compile(r"^[\w.*/-]+(/|\.[A-Za-z]+)$")  # `dir/`, `file.py`, `paper/*.yaml`


def layout_rows(readme: str) -> list[tuple[str, str]]:
    """(path, what) of every row of the table under `## Layout`."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 2 or set(cells[0]) <= set("-: "):
            continue
        if cells[0] != "path":  # the header
            rows.append((cells[0], cells[1]))
    return rows


def missing_paths(readme: str, root: Path = REPO) -> tuple[list[str], int]:
    """The paths named in the Layout table that do not exist, and how many were checked.

    A row's path is relative to the repository; a name in its description is relative to the
    row's path, to a folder named before it in the same description (`methods/` (... `recon.py`
    ...)), or, with a `/` inside it, to the repository (`docs/benchmarks.md`). Backquoted words
    that are no path (`data build`, `equirecon`, `--tiny`) are not checked.
    """
    missing, checked = [], 0
    for first, what in layout_rows(readme):
        row = first.strip("`")
        checked += 1
        if not (root / row).exists():
            missing.append(row)
            continue
        folders: list[str] = []
        for token in re.findall(r"`([^`]+)`", what):
            if not PATH_TOKEN.match(token):
                continue
            bases = [root / row, *(root / row / f for f in folders)]
            if "/" in token.rstrip("/"):
                bases.append(root)
            checked += 1
            if not any(next(base.glob(token.rstrip("/")), None) for base in bases):
                missing.append(f"{row.rstrip('/')}/{token}")
            if token.endswith("/"):
                folders.append(token)
    return missing, checked


def test_every_path_in_the_readme_layout_table_exists() -> None:
    missing, checked = missing_paths((REPO / "README.md").read_text())
    assert checked >= 30, f"the Layout table was not parsed ({checked} paths)"
    assert missing == [], f"README's Layout table names paths that do not exist: {missing}"


def test_a_stale_name_is_reported() -> None:
    readme = (REPO / "README.md").read_text()
    stale = readme.replace("(`builder/`: `data build`", "(`build/`: `data build`", 1)
    assert stale != readme
    assert missing_paths(stale)[0] == ["data_pipeline/build/"]
