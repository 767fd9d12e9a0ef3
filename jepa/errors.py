"""The errors a user can fix: one type, :class:`UserError`, and a subclass per family.

The CLI prints a :class:`UserError` as one ``error:`` line and exits with 2; every other exception,
a plain ``ValueError`` included, is a bug and keeps its traceback (:mod:`jepa.cli.errors`). So raise
one of these, with the file or key and the fix in the message, wherever the input is at fault;
``assert`` (or a plain ``ValueError``/``TypeError`` for a function's arguments) where the code is.

``UserError`` is a ``ValueError``: ``except ValueError`` (the loaders skip an undecodable sample on
it) and ``pytest.raises(ValueError)`` keep working. The tree, with the classes that live next to
their concept::

    UserError(ValueError)
    ├── ConfigError              a setting: recipe field, command-line option, environment variable
    │   ├── RecipeError          jepa.recipe.errors: a recipe file, one line per problem
    │   └── YAMLProblem          jepa.recipe.strict_yaml: text that is not a YAML recipe
    ├── DataError                shards, manifests, decoding a user's files, labels
    ├── CheckpointError          checkpoints, weights files, digests, fit checks, exports
    │   └── ExportVerificationError   jepa.export: an export differs from the model it came from
    ├── PluginError              an installed plugin cannot be used (also jepa.registry.PluginError)
    └── MissingHookError         jepa.interfaces: a modality lacks an optional hook (also a
                                 NotImplementedError)

A leaf module: it imports nothing from jepa, so any module (a loader worker, a decoder process, a
plugin) can raise these without import cycles. The classes here take one message: torch re-raises
an exception from a data-loader worker as ``type(exc)(text)`` (one with another constructor, such as
``RecipeError``, would come back as a ``RuntimeError``, so raise these in workers).
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the input or the environment that the user can fix; the message says what and how."""


class ConfigError(UserError):
    """A setting (recipe field, command-line option, environment variable) that cannot work."""


class DataError(UserError):
    """Data that cannot be used: shards, manifests, a user's files that do not decode, labels."""


class CheckpointError(UserError):
    """A checkpoint, weights file or export that is unreadable, incomplete, or does not fit."""


class PluginError(UserError):
    """An installed plugin cannot be used (import failed, wrong object, wrong name, registered twice,
    a hook that breaks its contract); the message is one line naming the plugin and the fix.
    ``jepa.registry.PluginError`` is this class."""
