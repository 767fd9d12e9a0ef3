"""The synthetic training source: random inputs from the modality, no data needed (benchmarks,
engine checks, ZeRO-stage comparisons)."""

from __future__ import annotations

from typing import Any, Iterator

import torch

from jepa.data.loader import STATE_VERSION, Batch, TrainLoader
from jepa.data.stream import derive_seed
from jepa.interfaces import MaskSampler, Modality, as_mask_pairs


class SyntheticTrainLoader(TrainLoader):
    """Random inputs from ``modality.example_input``, a pure function of (seed, micro-step).

    The global micro-batch of step i has ``micro_batch_size * world_size`` rows; its masks are
    sampled for all rows from a generator seeded by (seed, i) and row r's input from one seeded
    by (seed, i, r). Rank k takes rows ``[k*mb, (k+1)*mb)``, so any world size sees the same
    global batch (used to check ZeRO stages against one process) while each rank only builds
    its own rows.
    """

    def __init__(self, modality: Modality, mask_sampler: MaskSampler, *, seed: int, rank: int,
                 world_size: int, micro_batch_size: int, state: dict[str, Any] | None = None):
        self.modality, self.mask_sampler = modality, mask_sampler
        self.seed, self.rank, self.world_size, self.micro_batch_size = seed, rank, world_size, micro_batch_size
        self._step = 0
        if state is not None:
            global_batch = micro_batch_size * world_size
            if state.get("version") != STATE_VERSION or state.get("source") != "synthetic":
                raise ValueError(f"data-loader state {state.get('source')!r} v{state.get('version')!r} is not a "
                                 f"synthetic v{STATE_VERSION} state; resume with the same data.source")
            if state["seed"] != seed or state["global_batch"] != global_batch:
                raise ValueError(f"cannot resume the synthetic stream: seed/global micro-batch were "
                                 f"{state['seed']}/{state['global_batch']}, now {seed}/{global_batch}")
            self._step = state["step"]

    def batch(self, step: int) -> Batch:
        """This rank's rows of global micro-batch ``step``."""
        mb, n = self.micro_batch_size, self.micro_batch_size * self.world_size
        rows = range(self.rank * mb, (self.rank + 1) * mb)
        masks = self.mask_sampler(n, torch.Generator().manual_seed(derive_seed(self.seed, step)))
        inputs = torch.cat([self.modality.example_input(
            1, torch.Generator().manual_seed(derive_seed(self.seed, step, r))) for r in rows])
        return Batch(inputs, tuple(m[rows.start:rows.stop] for m in as_mask_pairs(masks)))

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
