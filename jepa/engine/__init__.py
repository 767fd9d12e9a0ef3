"""The training engine: the only package that imports DeepSpeed.

The training loop and the objectives (:mod:`jepa.objective`) talk to :class:`Engine` through a
handful of methods (``forward``, ``set_optim_hparams``, ``backward``, ``step``, ``gathered``,
``save_state`` / ``load_state``, ``full_state_dicts``, and the collectives); every
sharding-aware detail lives here, one concept a module:

* :mod:`jepa.engine.dist`: joining the process group (launchers, Slurm, a world of one, no C++
  build), this process's rank and device, the collectives.
* :mod:`jepa.engine.core`: :class:`Engine`, DeepSpeed ZeRO around the one module an objective
  trains, its frozen modules, precision, state.
* :mod:`jepa.engine.safe_load`: every DeepSpeed state file is unpickled weights-only.
* :mod:`jepa.engine.reshard`: resuming on another world size through DeepSpeed's universal
  checkpoint.
"""

from jepa.engine.core import DEEPSPEED_TAG, FUSED_ADAMW_DEVICES, Engine, deepspeed_config
from jepa.engine.dist import Collectives, DistInfo, init_distributed, use_environment_extensions_dir

__all__ = ["DEEPSPEED_TAG", "FUSED_ADAMW_DEVICES", "Collectives", "DistInfo", "Engine", "deepspeed_config",
           "init_distributed", "use_environment_extensions_dir"]
