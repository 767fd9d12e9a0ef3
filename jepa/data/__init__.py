"""Data: WebDataset shard sets and the exactly resumable training stream over them.

One concept per module:

- :mod:`~jepa.data.manifest`: a shard set's ``manifest.json``; sample counts and local/remote URLs.
- :mod:`~jepa.data.reading`: shard specs to URLs; one shard's raw samples; cut-short detection.
- :mod:`~jepa.data.writer`: writing shard sets from chunk jobs, in parallel, reproducibly; labelled
  ``train/`` / ``val/`` sets from ``(sample, label)`` pairs (:func:`write_labelled_splits`).
- :mod:`~jepa.data.folder`: any modality's sample files in a folder -> a shard set.
- :mod:`~jepa.data.stream`: one loader worker's resumable shuffle stream of raw samples.
- :mod:`~jepa.data.loader`: the training-loader contract (:class:`Batch`, :class:`TrainLoader`).
- :mod:`~jepa.data.shard_loader`: the shard training loader (decoding, batching, positions).
- :mod:`~jepa.data.synthetic`: the synthetic training source.
- :mod:`~jepa.data.build`: :func:`build_train_loader`, the loader the recipe's ``data.source`` picks.

The package imports the data layer alone; the training loaders (``shard_loader``, ``synthetic``,
``build``) take an objective's batch maker and the recipe's ``data`` section, so they are imported
from their modules (the recipe imports the objectives, which import :mod:`~jepa.data.loader`).

The labelled evaluation reader lives with evaluation (:mod:`jepa.eval.reader`).
"""

from jepa.data.folder import FolderListing, list_folder, sample_keys, shard_folder
from jepa.data.loader import STATE_VERSION, Batch, TrainLoader, collate_as_is
from jepa.data.manifest import (MANIFEST_NAME, Manifest, ShardInfo, SkippedFile, is_local, local_path, read_manifest,
                                shards_total)
from jepa.data.reading import SHARD_ERRORS, expand_shards, read_shard
from jepa.data.stream import derive_seed
from jepa.data.writer import (DEFAULT_MAX_BYTES, DEFAULT_MAX_COUNT, ChunkJob, LabelledPair, ShardSample,
                              write_labelled_splits, write_shard_set)

__all__ = [
    "Batch", "TrainLoader", "STATE_VERSION",
    "collate_as_is", "derive_seed", "expand_shards", "read_shard", "SHARD_ERRORS", "Manifest", "ShardInfo",
    "SkippedFile", "MANIFEST_NAME", "read_manifest", "shards_total", "is_local", "local_path", "ShardSample",
    "ChunkJob", "write_shard_set", "write_labelled_splits", "LabelledPair", "DEFAULT_MAX_COUNT", "DEFAULT_MAX_BYTES",
    "FolderListing", "list_folder", "sample_keys", "shard_folder",
]
