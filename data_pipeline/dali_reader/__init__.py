"""The DALI reader (``data.backend=dali``): WebDataset shards -> multi-crop ``Batch``es.

One DALI pipeline per rank reads the shards with ``fn.readers.webdataset`` (index files next to
the shards, ``<name>.idx``, as ``equirecon data build`` writes them; for shards without one an
index is generated into a temporary folder, so DALI never has to infer it), decodes each image
once (``device="mixed"``, i.e. nvJPEG on the GPU, when CUDA is available; ``"cpu"`` otherwise)
and makes DINOv2's views from it: two global and ``n_local`` local random-resized crops
(bicubic, antialiased), horizontal flips, colour jitter (p 0.8; brightness 0.4, contrast 0.4,
saturation 0.2, hue 0.1, in that fixed order; the contrast pivot is each crop's mean grey, as in
torchvision; hue and saturation act in YIQ space, DALI's ``fn.hsv``), grayscale (p 0.2),
gaussian blur (global 1 p 1.0, global 2 p 0.1, locals p 0.5; sigma 0.1-2 px; separable
per-sample kernels, ``fn.filter``, the torch path's kernel size cut at 3 sigma), solarization of
global 2 (p 0.2), ImageNet normalization, CHW float32. The colour ops run on uint8 crops.
Random choices are gated arithmetically (``coin * (x - 1) + 1``); a crop that is not blurred
gets a 1-tap kernel. Masks come from :func:`make_batch_masks`, seeded as in
the torch reader, so both backends draw the same masks for the same batch.

Order and ranks. Epoch ``e`` permutes the shard list with ``(seed, e)`` (the same on all ranks);
DALI gives rank ``r`` the contiguous ``r``-th of ``world_size`` equal parts of the samples
(``shard_id=rank, num_shards=world_size``), with ``stick_to_shard=True`` (a rank never strays
into another's part) and ``pad_last_batch=False``: every rank stops after
``floor(total / world_size) // batch_size`` batches, so all ranks agree on the epoch length and
no padded duplicate is ever yielded. Samples are shuffled inside a ``shuffle_buffer``-sample
buffer seeded by ``(seed, e, rank)``; augmentations by DALI's pipeline seed ``(seed, e, rank)``.
A new pipeline is built for each epoch.

Resume. DALI cannot restore a reader position. :meth:`DaliTrainLoader.state_dict` records
``(epoch, batches in epoch)``; :meth:`~DaliTrainLoader.load_state_dict` rebuilds that epoch's
pipeline from its seeds and runs (and drops) the batches already seen. That restores the data
order and masks; that the augmentations match too relies on DALI's random operators being
deterministic for a given seed, batch size and thread count (true for the CPU pipeline in our
tests, not promised by DALI, e.g. for the mixed decoder). Exact resume is guaranteed only by the
torch backend.

Bad data. Unreadable or truncated shards (and shards without images) are left out when the
loader is built and counted under ``bad_shard``. DALI cannot skip an undecodable image: its
decoder error stops the pipeline. We turn that into a ``RuntimeError`` naming the shard and the
member; shards written by ``equirecon data build`` never hold such images (the builder decodes
every image and leaves bad ones out), and the torch backend skips them.

Modules: `shards` (the DALI index of every shard, unreadable shards left out), `views` (the
augmentation graph of one view), `pipeline` (one epoch's DALI pipeline), `failures` (turning a
DALI error into a message naming the shard and sample), `loader` (:class:`DaliTrainLoader` and
``make_dali_loader``). NVIDIA DALI is optional: it is imported only when a pipeline is built.
"""
