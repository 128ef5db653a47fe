"""`equirecon data build`: image folders -> WebDataset shards, DALI index files and a manifest.

Layout of ``OUT`` (the same as the demo dataset's, so ``data.path=OUT`` works with both readers)::

    OUT/manifest.json                          counts, classes, bytes, bad files (all builds)
    OUT/<subset>/<split>-%06d.tar              samples: <key>.{jpg|png|webp}, <key>.json, <key>.cls,
                                               and the annotations of dense subsets
                                               (<key>.seg.png class ids, <key>.depth.png 16-bit)
    OUT/<subset>/<split>-%06d.idx              DALI ``fn.readers.webdataset`` index of that tar
    OUT/<subset>/.build/<split>-%06d.json      per-shard completion record (resume)

Sources are ImageFolder trees (``--labels folder``: the class is the first-level folder, classes
sorted by name, label = position, as torchvision's ImageFolder) or any folder/glob of images
(``--labels none``). JPEG, PNG and WebP bytes are stored as they are; other formats PIL reads
(BMP, GIF, TIFF) are re-encoded losslessly as PNG. Every image is fully decoded once, so files
that are unreadable, truncated or not images despite their extension are left out and listed,
with the reason, in the manifest. A source may carry annotation files (a segmentation mask, a
depth map: ``SourceFile.annotations``); each is decoded and re-encoded by its codec
(`data_pipeline.annotations`) and must have the image's size, else the sample is left out and
listed the same way. Standard dataset layouts (ImageNet, ADE20K, VOC, NYU Depth v2, COCO
images) are turned into such sources by `data_pipeline.formats`, which calls `write_split`.

Resume. Files are sorted, shuffled with ``seed`` (so shards are not sorted by class) and cut
into shards of about ``shard_size_mb`` of source bytes; this plan depends only on the file list
(paths, sizes, mtimes), the labels and the parameters. A shard is complete when its record holds
the plan's digest and its tar and index have the recorded sizes; complete shards are never
rewritten, so re-running a build (interrupted or not) only writes the missing shards.

Modules: `sources` (candidate images of a folder or glob, and their plan into shards), `images`
(decoding a source fully, converting its annotations), `shard` (writing one shard and its
completion record; a pool of them), `manifest` (``manifest.json``), `dataset` (``build_shards``
and ``write_split``: a whole split). The DALI index files are `data_pipeline.dali_index`.
"""

# The entry point, also at its old path `data_pipeline.builder.build_shards` because
# benchmarks/study_data.py (a frozen study script) imports it from there.
from data_pipeline.builder.dataset import build_shards

__all__ = ["build_shards"]
