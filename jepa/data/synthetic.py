"""The synthetic training source: random inputs from the modality, no data needed (benchmarks,
engine checks, ZeRO-stage comparisons)."""

from __future__ import annotations

from typing import Any, Iterator

import torch

from jepa.data.loader import STATE_VERSION, Batch, TrainLoader, accumulation_steps, step_generator
from jepa.data.stream import derive_seed
from jepa.errors import CheckpointError
from jepa.interfaces import Modality
from jepa.objective import BatchMaker


class SyntheticTrainLoader(TrainLoader):
    """Random inputs from ``modality.example_input``, a pure function of (seed, optimiser step, row).

    The global batch of step s is cut into ``world_size x A`` micro batches of ``micro_batch_size``
    rows (A the accumulation steps, ``global / (world x micro)``): the a-th micro batch of rank k is
    slot ``j = a * world_size + k``, rows ``[j*mb, (j+1)*mb)`` of the step. Row g's input comes from a
    generator seeded by (seed, s, g); a slot's masks are sampled for its own rows (the collation batch
    is the micro batch, as with shards) from one seeded by (seed, s, slot), with the step's shared
    draws from :func:`~jepa.data.loader.step_generator`. So any split of the global batch into
    ranks x accumulation steps with the same micro batch sees the same batches and masks (1 process
    accumulating 2 micro batches = 2 processes with one each; used to check ZeRO stages against
    one process), while each rank only builds its own rows.
    """

    def __init__(self, modality: Modality, batch_maker: BatchMaker, *, seed: int, rank: int,
                 world_size: int, micro_batch_size: int, global_batch_size: int,
                 state: dict[str, Any] | None = None):
        self.modality, self.batch_maker = modality, batch_maker
        self.seed, self.rank, self.world_size, self.micro_batch_size = seed, rank, world_size, micro_batch_size
        self.global_batch_size = global_batch_size
        self._step = 0
        if state is not None:
            global_batch = micro_batch_size * world_size
            if state.get("version") != STATE_VERSION or state.get("source") != "synthetic":
                raise CheckpointError(f"data-loader state {state.get('source')!r} v{state.get('version')!r} is not a "
                                 f"synthetic v{STATE_VERSION} state; resume with the same data.source")
            if state["seed"] != seed or state["global_batch"] != global_batch:
                raise CheckpointError(f"cannot resume the synthetic stream: seed/global micro-batch were "
                                 f"{state['seed']}/{state['global_batch']}, now {seed}/{global_batch}")
            self._step = state["step"]

    def batch(self, step: int) -> Batch:
        """This rank's ``step``-th micro batch (counted from 0 over the whole run)."""
        mb, world = self.micro_batch_size, self.world_size
        optim_step, a = divmod(step, accumulation_steps(self.global_batch_size, world, mb))
        slot = a * world + self.rank
        inputs = torch.cat([self.modality.example_input(
            1, torch.Generator().manual_seed(derive_seed(self.seed, optim_step, slot * mb + r))) for r in range(mb)])
        return self.batch_maker.from_inputs(inputs, torch.Generator().manual_seed(derive_seed(self.seed, optim_step, -1, slot)),
                                            step_generator(self.seed, optim_step))

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batch = self.batch(self._step)
            self._step += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "source": "synthetic", "seed": self.seed,
                "global_batch": self.micro_batch_size * self.world_size, "step": self._step}

    @property
    def stats(self) -> dict[str, float]:
        return {"seen": self._step * self.micro_batch_size, "skipped": 0, "skip_rate": 0.0, "broken_shards": 0,
                "batches": self._step}
