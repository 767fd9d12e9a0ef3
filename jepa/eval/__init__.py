"""Frozen-feature evaluation of trained encoders (``jepa eval``); protocols in ``docs/eval_protocols.md``.

* :mod:`jepa.sources` (below both evaluation and export): run dir / checkpoint / foreign
  file / export / ``random:RECIPE`` -> a frozen encoder and its evaluation view;
* :mod:`jepa.eval.reader`: labelled shards (and :mod:`jepa.eval.folder`: a folder of class
  sub-folders), scanned, then read in passes (subsets, shuffling, the modality's augmentation);
  :mod:`jepa.eval.labels`: labels checked as data, the one-pass reader of the online k-NN;
* :mod:`jepa.eval.features`: what probes read from the encoder; the pooled-feature store;
* :mod:`jepa.eval.heads`: grids of linear and attentive heads, one optimiser for all;
* :mod:`jepa.eval.training`: training and scoring a grid on a stream of batches;
* :mod:`jepa.eval.grid`: the (lr, wd) grid, per-head scores, the held-out choice;
* :mod:`jepa.eval.knn`: streaming k-NN (:class:`StreamingKNN`, also used by the online probe of pretraining);
* :mod:`jepa.eval.probes`: full-batch probes on features in memory (``logreg``), low-shot subsets;
* :mod:`jepa.eval.memory`: the up-front memory plan;
* :mod:`jepa.eval.protocols`: every protocol declared once (features, seed salt, defaults, memory
  needs, ``run``), in the registry :data:`PROTOCOLS`;
* :mod:`jepa.eval.settings`: :class:`EvalSettings`, what ``jepa eval`` runs;
* :mod:`jepa.eval.context`: what the protocols of one evaluation share (splits, shapes, stores);
* :mod:`jepa.eval.evaluate`: scan, plan, store, then run the selected protocols in order;
* :mod:`jepa.eval.report`: the tables and the versioned JSON report.
"""

from jepa.eval.evaluate import evaluate, evaluate_shards, open_labelled
from jepa.eval.folder import FolderData
from jepa.eval.knn import StreamingKNN
from jepa.eval.protocols import PROTOCOLS, Outcome, Protocol, register
from jepa.eval.reader import LabelledData, ShardData
from jepa.eval.settings import EvalSettings
from jepa.eval.report import EvalReport, ProbeResult
from jepa.sources import EncoderSource, load_source

__all__ = [
    "PROTOCOLS", "EvalReport", "EvalSettings", "EncoderSource", "FolderData", "LabelledData", "Outcome", "ProbeResult",
    "Protocol", "ShardData", "StreamingKNN", "evaluate", "evaluate_shards", "load_source", "open_labelled", "register",
]
