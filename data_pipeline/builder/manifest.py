"""``manifest.json`` of a dataset root: every build (``<subset>/<split>``) with its counts,
classes, shards and bad files; a build replaces its own entry and keeps the others."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from equirecon.rundir import write_text_atomic

BUILD_FORMAT = "equirecon-shards"
BUILD_VERSION = 1  # the digest of a shard without annotations is unchanged by them


def load_manifest(out: Path) -> dict[str, Any]:
    """The manifest of ``out`` (an empty one when there is none).

    Raises:
        ValueError: it is not JSON.
        FileExistsError: it belongs to another kind of dataset.
    """
    path = out / "manifest.json"
    if not path.is_file():
        return {
            "format": BUILD_FORMAT,
            "version": BUILD_VERSION,
            "counts": {},
            "shards": {},
            "builds": {},
        }
    try:
        manifest = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); move it away or choose another --out"
        ) from None
    if manifest.get("format") != BUILD_FORMAT:
        raise FileExistsError(
            f"{path} belongs to another kind of dataset (format {manifest.get('format')!r}, "
            f"expected {BUILD_FORMAT!r}); choose another --out"
        )
    return manifest


def record_build(
    out: Path,
    manifest: dict[str, Any],
    entry: dict[str, Any],
    *,
    subset: str,
    split: str,
    labels: str,
    classes: Sequence[str],
    subset_info: dict[str, Any] | None,
) -> None:
    """Adds (or replaces) the build ``entry`` of ``<subset>/<split>`` and writes the manifest."""
    manifest.setdefault("builds", {})[f"{subset}/{split}"] = entry
    manifest.setdefault("counts", {}).setdefault(subset, {})[split] = entry["num_samples"]
    manifest.setdefault("shards", {}).setdefault(subset, {})[split] = [
        s["tar"] for s in entry["shards"]
    ]
    if labels == "folder":
        manifest["classes"] = classes
    if subset_info is not None:
        manifest[subset] = subset_info
    manifest["complete"] = all(b.get("complete") for b in manifest["builds"].values())
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")


__all__ = ["BUILD_FORMAT", "BUILD_VERSION", "load_manifest", "record_build"]
