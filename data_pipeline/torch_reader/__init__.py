"""The torch reader (``data.backend=torch``): WebDataset shards -> multi-crop ``Batch``es.

Decoding and augmentation run on the CPU, in ``num_workers`` DataLoader processes.

Data order. Epoch ``e`` permutes the shard list with an RNG seeded by ``(seed, e)`` and deals
the shards round-robin to the ``world_size * num_workers`` streams, stream ``rank * num_workers +
worker`` (with fewer shards than streams the concatenated samples are cut into equal contiguous
index ranges instead, so nothing is duplicated or lost). Each stream shuffles its samples with a
bounded buffer seeded by ``(seed, e, rank, worker)``. Every worker makes the same number of
batches per epoch (the minimum over all streams of all ranks, from the shard sample counts), so
``DataLoader`` yields them strictly round-robin and every rank has the same epoch length.

Randomness. Augmentations of a worker's ``j``-th batch are seeded by ``(seed, e, rank, worker,
j)``; the iBOT masks of the epoch's ``i``-th batch by ``(seed, e, rank, i)`` (rank included so
ranks do not share masks). Hence batches are a pure function of these numbers, which is what
makes exact resume possible: :meth:`TrainLoader.state_dict` records, per worker, the batches
yielded and the raw stream position, and a restored loader skips those raw samples without
decoding them.

Modules: `stream` (raw samples of a shard set, split over ranks and workers, per epoch),
`batches` (what one worker makes of its stream: decoded, augmented and masked batches),
`loader` (:class:`~data_pipeline.torch_reader.loader.TrainLoader`, the resumable iterable over
those batches, and ``build_train_loader``). Decoding is `data_pipeline.decode`, seeds are
`data_pipeline.seeds`.
"""
