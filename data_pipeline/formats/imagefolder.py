"""``--format imagefolder``: ImageNet's layout, class folders under ``train/`` and ``val/``.

Layout (ILSVRC2012 after the usual step that moves the validation images into class folders)::

    ROOT/train/<wnid>/<name>.JPEG       e.g. train/n01440764/n01440764_10026.JPEG
    ROOT/val/<wnid>/<name>.JPEG         e.g. val/n01440764/ILSVRC2012_val_00000293.JPEG
    ROOT/LOC_synset_mapping.txt         optional: "<wnid> <name>, <name>" per line (Kaggle)

Writes ``labelled/{train,val}``: label = position of the class folder among the sorted train
folders (torchvision's ImageFolder), the same index for val. Val folders unknown to train are
left out (listed as ignored). The manifest holds the class folders (``classes``) and, with the
synset file, their names (``labelled.class_names``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from data_pipeline.builder.sources import find_sources
from data_pipeline.formats.base import LayoutError, SplitSources, image_files, require_dir

LAYOUT = "ROOT/train/<class>/*.JPEG and ROOT/val/<class>/*.JPEG"
SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")


def _class_names(root: Path, classes: list[str]) -> list[str] | None:
    for name in SYNSET_FILES:
        path = root / name
        if path.is_file():
            names = {}
            for line in path.read_text().splitlines():
                wnid, _, words = line.strip().partition(" ")
                names[wnid] = words.strip()
            return [names.get(c, c) for c in classes]
    return None


def find(root: Path) -> list[SplitSources]:
    require_dir(root / "train", LAYOUT)
    _, train_files, classes, train_ignored = find_sources(str(root / "train"), "folder")
    info = {"classes": classes, "class_names": _class_names(root, classes)}
    builds = [
        SplitSources(
            "labelled", "train", root / "train", train_files, "folder", classes, train_ignored,
            subset_info=info,
        )
    ]  # fmt: skip
    val_dir = root / "val"
    if val_dir.is_dir():
        if not any(p.is_dir() and not p.name.startswith(".") for p in val_dir.iterdir()):
            if image_files(val_dir):
                raise LayoutError(
                    f"{val_dir} holds images directly (the ILSVRC2012 archive layout); move them "
                    "into one folder per class first (as ImageNet's valprep.sh does)"
                )
        _, val_files, _, val_ignored = find_sources(str(val_dir), "folder")
        index = {name: i for i, name in enumerate(classes)}
        kept = []
        for source in val_files:
            label = index.get(Path(source.rel).parts[0])
            if label is None:
                val_ignored.append(source.rel)
            else:
                kept.append(dataclasses.replace(source, label=label))
        builds.append(
            SplitSources(
                "labelled", "val", val_dir, kept, "folder", classes, sorted(val_ignored),
                subset_info=info,
            )
        )  # fmt: skip
    return builds
