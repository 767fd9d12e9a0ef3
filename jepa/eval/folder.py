"""A folder of class sub-folders as a labelled split (:class:`FolderData`): label = index of the
sorted class names; every file is checked to decode once, in child processes, before anything is read."""

from __future__ import annotations

import os
import random
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from jepa.data import SkippedFile, list_folder, sample_keys
from jepa.data.screening import DecodeScreen
from jepa.errors import DataError
from jepa.eval.features import progress_bar
from jepa.eval.reader import LabelIndex, LabelledData, PassSpec, _PassDataset
from jepa.interfaces import Modality


class FolderData(LabelledData):
    """A folder of class sub-folders (label = index of the sorted class names), read directly.

    The scan lists the modality's files (:func:`jepa.data.list_folder`) and checks that each one
    decodes, in a child process (:class:`jepa.data.screening.DecodeScreen`), so a file that
    crashes or hangs the decoder is skipped like one that raises; skipped files are counted and
    reported, and never read again.
    """

    kind = "folder"

    def __init__(self, spec: str, modality: Modality):
        super().__init__(spec, modality)
        self.root = Path(spec)
        self.files: list[str] = []
        self.exts: list[str] = []
        self.keys: list[str] = []

    def _max_workers(self) -> int:
        return max(1, len(self.files))

    def scan(self, num_workers: int = 0) -> LabelIndex:
        listing = list_folder(self.root, self.modality.file_suffixes(), self.modality.name)
        if listing.labels is None:
            raise DataError(f"{self.root} holds files but no class sub-folders, so it has no labels; evaluation "
                             "needs a folder of class sub-folders (one per class) holding the files")
        files = [str(f) for f in listing.files]
        keys = sample_keys(listing.files)
        problems = _screen_files(self.modality, self.root, files, listing.exts, keys, num_workers)
        ok = [i for i, p in enumerate(problems) if p is None]
        skipped = [SkippedFile(files[i], p) for i, p in enumerate(problems) if p is not None]
        if not ok:
            raise DataError(f"{self.root}: none of its {len(files)} files decodes (first: {skipped[0].path}: "
                             f"{skipped[0].error})")
        self.files = [files[i] for i in ok]
        self.exts = [listing.exts[i] for i in ok]
        self.keys = [keys[i] for i in ok]
        labels = torch.tensor([listing.labels[i] for i in ok], dtype=torch.int64)
        self.index = LabelIndex(labels, listing.classes, skipped)
        return self.index

    def _dataset(self, spec: PassSpec) -> _PassDataset:
        assert self.index is not None
        return _FolderPass(self.modality, spec, self.index.labels_N, self.root, self.files, self.exts, self.keys)


SCREEN_CHUNK = 256
"""Files per screening job (one child decoder process per job)."""


def _screen_chunk(modality: Modality, root: str, files: Sequence[str], exts: Sequence[str],
                  keys: Sequence[str]) -> list[str | None]:
    """None for each file that decodes, else why not (read error, decoder error, crash or hang)."""
    problems: list[str | None] = []
    with DecodeScreen(modality) as screen:
        for rel, ext, key in zip(files, exts, keys):
            try:
                data = Path(root, rel).read_bytes()
            except OSError as exc:
                problems.append(f"{type(exc).__name__}: {exc.strerror or exc}")
                continue
            problems.append(screen.check({"__key__": key, "__url__": str(Path(root, rel)), ext: data}))
    return problems


def _one_thread() -> None:
    """Screening processes use one intra-op thread each: the processes are the parallelism."""
    torch.set_num_threads(1)


def _screen_files(modality: Modality, root: Path, files: list[str], exts: list[str], keys: list[str],
                  num_workers: int) -> list[str | None]:
    """:func:`_screen_chunk` over every file, in ``num_workers`` processes (at least one child decoder)."""
    chunks = [range(s, min(s + SCREEN_CHUNK, len(files))) for s in range(0, len(files), SCREEN_CHUNK)]
    out: list[list[str | None]] = [[] for _ in chunks]
    with progress_bar() as progress:
        task = progress.add_task(f"checking {root.name}/ decodes", total=len(files))

        def args(c: range) -> tuple:
            return (modality, str(root), files[c.start:c.stop], exts[c.start:c.stop], keys[c.start:c.stop])

        if num_workers <= 1 or len(chunks) == 1:
            for i, c in enumerate(chunks):
                out[i] = _screen_chunk(*args(c))
                progress.advance(task, len(c))
        else:
            with ProcessPoolExecutor(max_workers=min(num_workers, len(chunks)), initializer=_one_thread) as pool:
                futures = {pool.submit(_screen_chunk, *args(c)): i for i, c in enumerate(chunks)}
                for fut in as_completed(futures):
                    i = futures[fut]
                    out[i] = fut.result()
                    progress.advance(task, len(chunks[i]))
    return [p for chunk in out for p in chunk]


class _FolderPass(_PassDataset):
    def __init__(self, modality: Modality, spec: PassSpec, labels_N: Tensor, root: Path, files: list[str],
                 exts: list[str], keys: list[str]):
        super().__init__(modality, spec, labels_N)
        self.root, self.files, self.exts, self.keys = root, files, exts, keys

    def _samples(self, worker: int, num_workers: int, rng: random.Random | None) -> Iterator[tuple[int, dict | None]]:
        order = list(range(len(self.files))) if self.keep is None else self.keep.nonzero()[0].tolist()
        if rng is not None:
            rng.shuffle(order)
        for idx in order[worker::num_workers]:
            path = os.path.join(self.root, self.files[idx])
            try:
                data = Path(path).read_bytes()
            except OSError:
                yield idx, None
                continue
            yield idx, {"__key__": self.keys[idx], "__url__": path, self.exts[idx]: data}
