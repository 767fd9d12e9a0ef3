"""The modality contract, pinned for every registered modality (``jepa.interfaces.Modality``).

The checks live in :mod:`jepa.testing`, the entry point a plugin's own tests use too
(``globals().update(modality_contract_tests("audio"))``); here they run over every modality
registered at collection time: the built-in image and video modalities, the test toy
(``conftest.py``), the example plugin when installed (``examples/jepa-timeseries``; ``tools/env.sh``
installs it), and any other installed plugin, each with its own ``tiny_config()`` and with every
registered objective.

Run it against one modality: install its plugin into the environment and
``python -m pytest tests/test_modality_contract.py -k NAME``.
"""

from __future__ import annotations

from jepa.testing import modality_contract_tests

globals().update(modality_contract_tests())
