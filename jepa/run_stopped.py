"""Why a run stops itself: the exceptions of the health checks (:mod:`jepa.monitor`) and of the
training stream (:mod:`jepa.data`). The CLI exits 1 with the message for any of them.

A leaf module: the monitor, the data loaders and the CLI all raise or catch these, and none of
them has to import another for it.
"""


class RunStoppedError(RuntimeError):
    """The run stopped itself because a health check failed (the CLI exits 1 with the message)."""


class NonFiniteLossError(RunStoppedError):
    """The loss became NaN or infinite; the message names the first such step."""


class RepresentationCollapseError(RunStoppedError):
    """The spread of the target representations fell below ``log.collapse_threshold``, or
    their RankMe below ``log.collapse_rankme``."""


class DataStreamError(RunStoppedError):
    """The training stream cannot go on: too many samples fail to decode, or no shard gives any
    sample (the run stops; the CLI exits 1 with the message)."""
