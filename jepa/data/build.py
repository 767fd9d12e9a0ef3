"""The training loader of one rank, picked by the recipe's ``data.source``."""

from __future__ import annotations

from typing import Any

from jepa.data.loader import TrainLoader
from jepa.data.reading import expand_shards
from jepa.data.shard_loader import ShardTrainLoader
from jepa.data.synthetic import SyntheticTrainLoader
from jepa.errors import ConfigError
from jepa.interfaces import Modality
from jepa.objective import BatchMaker
from jepa.recipe import DataConfig


def build_train_loader(data_cfg: DataConfig, modality: Modality, batch_maker: BatchMaker, *,
                       seed: int, rank: int, world_size: int, micro_batch_size: int,
                       state: dict[str, Any] | None = None) -> TrainLoader:
    """The training stream of one rank.

    Args:
        data_cfg: the recipe's ``data`` section.
        modality: the bound modality; decodes samples and builds batches (``decode``, ``train_batch``, ``example_input``).
        batch_maker: the objective's batches of decoded items: one view and masks, or several views
            (runs in the loader workers; ``Objective.batch_maker()``).
        seed: the run seed.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of data-parallel processes.
        micro_batch_size: rows per batch on this rank.
        state: a previous loader's ``state_dict()`` to continue from exactly.

    Raises:
        ValueError: bad rank/batch size, missing shards, or a state from other data settings.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}) (got {rank})")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1 (got {micro_batch_size})")
    if data_cfg.source == "synthetic":
        return SyntheticTrainLoader(modality, batch_maker, seed=seed, rank=rank, world_size=world_size,
                                    micro_batch_size=micro_batch_size, global_batch_size=data_cfg.global_batch_size,
                                    state=state)
    if not data_cfg.train_shards:
        raise ConfigError("data.train_shards is required when data.source is 'shards'")
    return ShardTrainLoader(expand_shards(data_cfg.train_shards), data_cfg, modality, batch_maker,
                            seed=seed, rank=rank, world_size=world_size, micro_batch_size=micro_batch_size, state=state)
