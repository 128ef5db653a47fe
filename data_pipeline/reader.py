"""Former home of the torch reader, now split by job: `data_pipeline.decode`,
`data_pipeline.seeds`, `data_pipeline.torch_reader` and `data_pipeline.eval_images`.

Kept for importers outside this package's part of the restructuring: benchmarks/study_data.py
(a frozen study script: ``to_rgb``), evals/annotated.py (``SkipSample``, ``decode_image``) and
evals/run.py (``iter_images``, ``load_images``). New code imports from the modules above.
"""

from data_pipeline.decode import SkipSample, decode_image, to_rgb
from data_pipeline.eval_images import iter_images, load_images

__all__ = ["SkipSample", "decode_image", "iter_images", "load_images", "to_rgb"]
