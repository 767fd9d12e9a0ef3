"""Frozen-feature evaluation of trained encoders (``jepa eval``).

* :mod:`jepa.sources` (below both evaluation and export): run dir / checkpoint / foreign
  file / export / ``random:RECIPE`` -> a frozen encoder and its evaluation view;
* :mod:`jepa.eval.features`: encode a labelled split once, cache pooled features and tokens;
* :mod:`jepa.eval.probes`: linear (L-BFGS), k-NN, attentive probes, low-shot subsets, top-k;
* :mod:`jepa.eval.evaluate`: run the requested protocols;
* :mod:`jepa.eval.report`: the table and the versioned JSON report.
"""

from jepa.eval.evaluate import PROTOCOLS, EvalSettings, evaluate, evaluate_features, evaluate_shards
from jepa.eval.report import EvalReport, ProbeResult
from jepa.sources import EncoderSource, load_source

__all__ = [
    "PROTOCOLS", "EvalReport", "EvalSettings", "EncoderSource", "ProbeResult", "evaluate", "evaluate_features",
    "evaluate_shards", "load_source",
]
