"""Checkpoints: atomic, complete-or-absent, exactly resumable, with a consolidated weights file.

Layout of a run directory (the file names and ``models.pt`` keys are public API)::

    RUN_DIR/checkpoints/
        latest                 "step_000123": the checkpoint written last (written atomically after it is complete)
        step_000123/
            models.pt          rank 0: {"format_version": 1, "step", "recipe", and a full fp32 state dict
                               (gathered under ZeRO-3) per checkpoint part of the objective: ijepa
                               "encoder", "predictor", "target_encoder"; lejepa "encoder", "projector"
                               (+ "target_encoder", "target_projector" with an EMA teacher)}
            meta.json          step, world size, micro batch, accumulation steps, ZeRO stage, precision
            rank_00000.pt      per rank: data-loader position and RNG states (tensors and plain types)
            deepspeed/         DeepSpeed's model / optimiser / ZeRO-shard files
            digests.json       {"format_version": 1, "algorithm": "sha256", "files": {path: {"size", "sha256"}}}
                               for every other file (written last; the ranks hash their shares in parallel)

A checkpoint is written into ``step_000123.tmp/`` and renamed once every rank has finished
(a barrier), so a directory without ``.tmp`` is complete by construction; a crash mid-write
leaves only a ``.tmp`` directory, which resuming ignores and the next save removes. The run
directory must be on a filesystem every node sees (the training loop checks this).

Integrity: a checkpoint is *valid* when every file its ``digests.json`` lists is there with
that size and SHA-256. Resuming verifies the checkpoint it loads (``--resume auto`` tries the one
``latest`` names, then the others newest first, and says which it skipped and why); export and
evaluation verify ``models.pt``. Pruning keeps the checkpoint just written (the newest valid one)
and the newest older ones; checkpoints of a later step than the one just written (left behind
when a run was resumed from an older checkpoint) are left alone until the run overwrites them.

Safety: every file is read with ``torch.load(weights_only=True)`` (DeepSpeed's through
:class:`~jepa.engine.Engine`), so a crafted file cannot run code; digests guard against
corruption, not against someone who can write the run directory.

A checkpoint that does not fit the recipe fails loudly, naming the mismatched keys, shapes and
recipe fields; nothing is ever partially loaded or silently restarted from step 0.

Another number of processes: a checkpoint written by N processes resumes on M. The global batch
and the schedules stay the recipe's and the micro batch stays the checkpoint's, so the
accumulation steps follow (``global = M x micro x accumulation``; :func:`resume_batch_split`,
called before the engine is built); a micro batch that cannot be kept is refused with the
numbers. The engine state goes through DeepSpeed's universal checkpoint (converted into
``step_000123.reshard.tmp/`` next to the checkpoint and removed after loading; the checkpoint
itself is only read), every old rank's data position is re-dealt over the new ranks
(:mod:`jepa.data.redeal`: no sample of the shard-epochs in progress is lost or repeated), and
rank r takes the RNG states of old rank ``r mod N``. The losses then continue the curve but are
not bitwise those of an uninterrupted run (other batches per rank, another reduction order).

One concept per module: :mod:`~jepa.checkpoint.layout` (names, which checkpoint),
:mod:`~jepa.checkpoint.integrity` (digests), :mod:`~jepa.checkpoint.rng` (generator states),
:mod:`~jepa.checkpoint.save`, :mod:`~jepa.checkpoint.meta` (what the writing processes were),
:mod:`~jepa.checkpoint.resume`, :mod:`~jepa.checkpoint.resize` (another number of processes) and
:mod:`~jepa.checkpoint.models` (the weights export and evaluation read).
"""

from jepa.checkpoint.integrity import file_digest, verify_checkpoint, verify_collectively
from jepa.checkpoint.layout import (CHECKPOINTS, DIGESTS_FILE, DIGESTS_VERSION, FORMAT_VERSION, LATEST_FILE, META_FILE,
                                    MODELS_FILE, RESHARD_SUFFIX, complete_checkpoints, newest_checkpoint,
                                    resume_candidates, step_dir_name)
from jepa.checkpoint.models import LoadedWeights, load_model_weights
from jepa.checkpoint.resize import resume_batch_split
from jepa.checkpoint.resume import RESUMABLE_CHANGES, ResumePoint, load_checkpoint, recipe_differences, resolve_resume
from jepa.checkpoint.rng import capture_rng, restore_rng
from jepa.checkpoint.save import save_checkpoint

__all__ = [
    "CHECKPOINTS", "DIGESTS_FILE", "DIGESTS_VERSION", "FORMAT_VERSION", "LATEST_FILE", "META_FILE", "MODELS_FILE",
    "RESHARD_SUFFIX", "RESUMABLE_CHANGES", "LoadedWeights", "ResumePoint", "capture_rng", "complete_checkpoints",
    "file_digest", "load_checkpoint", "load_model_weights", "newest_checkpoint", "recipe_differences",
    "resolve_resume", "restore_rng", "resume_batch_split", "resume_candidates", "save_checkpoint", "step_dir_name",
    "verify_checkpoint", "verify_collectively",
]
