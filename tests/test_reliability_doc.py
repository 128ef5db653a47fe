"""Every row of the fault matrix (docs/reliability.md) points at a test that exists."""

from __future__ import annotations

import re

from tests.conftest import REPO

DOC = REPO / "docs" / "reliability.md"


def test_every_fault_row_names_existing_tests() -> None:
    rows = [ln for ln in DOC.read_text().splitlines() if ln.startswith("| ") and "tests/" in ln]
    assert len(rows) >= 25, "the fault matrix lost rows"
    last_file = ""
    for row in rows:
        test_cell = row.rstrip(" |").rsplit(" | ", 1)[-1]
        refs = re.findall(r"`([^`]+)`", test_cell)
        assert refs, f"row without a test: {row[:80]}"
        for ref in refs:
            path, _, names = ref.partition("::")
            if path.startswith("…") or not path:  # `…[param]`, `::test_x`: the file before
                path = last_file
            elif path.startswith("tests/"):
                last_file = path
            else:
                continue  # not a test reference (a file name, a message)
            source = (REPO / path).read_text()
            for name in re.findall(r"test_\w+", names):
                assert f"def {name}(" in source, f"{path} has no {name} (docs/reliability.md)"
