"""jepa's modality contract suite, run on this plugin as installed (``pip install -e .``).

``python -m pytest tests`` from this folder (with the python of the environment jepa and the
plugin are installed in) trains, exports and evaluates the plugin's ``tiny_config()`` on CPU.
"""

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the suite's tiny runs are CPU runs, also on a GPU machine

from jepa.testing import modality_contract_tests  # noqa: E402

globals().update(modality_contract_tests("timeseries"))
