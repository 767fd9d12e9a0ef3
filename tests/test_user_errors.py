"""User errors are a type: a :class:`jepa.errors.UserError` ends the CLI in one ``error:`` line and
exit 2; anything else, a plain ``ValueError`` included, is a bug shown with its traceback, a line
saying so, and exit 1 (:mod:`jepa.cli.errors`). A static check keeps new code on ``UserError``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

import jepa
from jepa.cli.errors import BUG_LINE, USER_ERROR, exit_code_for, message_of
from jepa.errors import CheckpointError, ConfigError, DataError, PluginError, UserError
from cli_runner import one_error_line, run_jepa

RECIPE = "recipes/image_demo.yaml"
ROOT = Path(jepa.__file__).parent


def _raiser(exc: BaseException):
    def raise_it(*args, **kwargs):
        raise exc
    return raise_it


@pytest.mark.parametrize("exc", [ValueError("internal: the context and target index sets overlap"),
                                 KeyError("encoder.blocks.0"), TypeError("unsupported operand")])
def test_a_programming_error_shows_its_traceback_and_the_bug_line(monkeypatch, capsys, exc):
    monkeypatch.setattr("jepa.cli.recipe_cmds.load_recipe", _raiser(exc))
    code, _, err = run_jepa(monkeypatch, capsys, "recipe", "check", RECIPE)
    assert code == 1, err
    assert "Traceback (most recent call last):" in err and f"{type(exc).__name__}: " in err, err
    assert "raise_it" in err  # the frame that raised it is shown
    assert err.rstrip().splitlines()[-1] == f"error: {BUG_LINE}"
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


@pytest.mark.parametrize("cls", [UserError, ConfigError, DataError, CheckpointError, PluginError])
def test_a_user_error_is_one_line_and_exit_2(monkeypatch, capsys, cls):
    monkeypatch.setattr("jepa.cli.recipe_cmds.load_recipe", _raiser(cls("shards/x.tar: not a tar file; rewrite it")))
    code, _, err = run_jepa(monkeypatch, capsys, "recipe", "check", RECIPE)
    assert code == USER_ERROR
    assert one_error_line(err) == "error: shards/x.tar: not a tar file; rewrite it"
    assert "bug" not in err


def test_the_bug_line_escapes_control_characters_of_the_traceback(monkeypatch, capsys):
    monkeypatch.setattr("jepa.cli.recipe_cmds.load_recipe", _raiser(RuntimeError("name\x1b[2Jwith escape")))
    code, _, err = run_jepa(monkeypatch, capsys, "recipe", "check", RECIPE)
    assert code == 1 and "\x1b" not in err and "RuntimeError: name" in err


class _RaisingStream(IterableDataset):
    """Raises ``exc`` in the loader worker that iterates it."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __iter__(self):
        raise self.exc


def _first_batch(exc: BaseException) -> None:
    next(iter(DataLoader(_RaisingStream(exc), batch_size=None, num_workers=1)))


@pytest.mark.parametrize("cls", [DataError, ConfigError, CheckpointError])
def test_a_user_error_raised_in_a_loader_worker_keeps_its_type_and_message(cls):
    with pytest.raises(cls) as info:  # torch re-raises it as type(exc)(text with the worker's traceback)
        _first_batch(cls("shard-000003.tar sample 'a1': 'cls' is b'x', not a class number"))
    assert exit_code_for(info.value) == USER_ERROR
    assert message_of(info.value) == "shard-000003.tar sample 'a1': 'cls' is b'x', not a class number"


def test_a_user_error_in_a_loader_worker_is_one_line_in_the_cli(monkeypatch, capsys):
    message = "shard-000003.tar: not a readable tar file (unexpected end of data); rewrite the shard"
    monkeypatch.setattr("jepa.cli.recipe_cmds.load_recipe", lambda *a, **k: _first_batch(DataError(message)))
    code, _, err = run_jepa(monkeypatch, capsys, "recipe", "check", RECIPE)
    assert code == USER_ERROR
    assert one_error_line(err) == f"error: {message}"


def test_a_plain_value_error_in_a_loader_worker_is_a_bug(monkeypatch, capsys):
    monkeypatch.setattr("jepa.cli.recipe_cmds.load_recipe",
                        lambda *a, **k: _first_batch(ValueError("index 7 is out of range for a batch of 4")))
    code, _, err = run_jepa(monkeypatch, capsys, "recipe", "check", RECIPE)
    assert code == 1
    assert "Original Traceback" in err and "index 7 is out of range" in err  # the worker's traceback is kept
    assert err.rstrip().splitlines()[-1] == f"error: {BUG_LINE}"


def test_the_user_error_families_share_one_base():
    from jepa.export import ExportVerificationError
    from jepa.interfaces import MissingHookError
    from jepa.recipe import RecipeError, YAMLProblem
    from jepa.registry import PluginError as RegistryPluginError

    assert RegistryPluginError is PluginError
    for cls in (ConfigError, DataError, CheckpointError, PluginError, RecipeError, YAMLProblem,
                ExportVerificationError, MissingHookError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError), cls
    assert issubclass(RecipeError, ConfigError) and issubclass(ExportVerificationError, CheckpointError)
    assert issubclass(MissingHookError, NotImplementedError)  # what it was: `except NotImplementedError` still works
    assert exit_code_for(MissingHookError("toy", "file_suffixes", "`jepa shards` from a folder")) == USER_ERROR
    assert exit_code_for(RecipeError("r.yaml", [("optim.lr", "must be > 0")])) == USER_ERROR
    assert exit_code_for(ValueError("x")) is None and exit_code_for(KeyError("x")) is None


def test_jepa_errors_is_a_leaf_module():
    tree = ast.parse((ROOT / "errors.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert all(name == "__future__" for name in imported), imported


INTERNAL_VALUE_ERRORS = {
    # (file under jepa/, enclosing function): count. Arguments no user input reaches (the CLI and the
    # recipe check them first): when one fires, jepa has a bug, and the CLI shows its traceback.
    ("data/build.py", "build_train_loader"): 2,  # rank / micro batch: from the engine and the recipe's batch split
    ("eval/probes.py", "topk_accuracy"): 1,  # score rows vs labels: the caller's bookkeeping
    ("health.py", "rankme"): 2,  # the monitor hands it a (rows, D) batch of representations
    ("modalities/image/masks.py", "sample_blocks"): 1,  # batch_size >= 1: loader bookkeeping
    ("modalities/image/released.py", "load_released"): 1,  # which=: a literal at every call
    ("modalities/video/released.py", "load_checkpoint"): 1,  # which=: a literal at every call
    ("modalities/image/transforms.py", "_check_items"): 1,  # an empty batch: the loader never collates one
    ("modalities/video/demo.py", "encode_mp4"): 1,  # frames rendered by the demo itself
    ("modalities/video/transforms.py", "_check_items"): 2,  # an empty batch; an item not from decode
    ("nn/grid_masks.py", "cut_to_shortest"): 1,  # how=: a literal at every call
    ("nn/grid_masks.py", "sample_blocks"): 1,  # batch_size >= 1: loader bookkeeping
    ("objectives/lejepa_loss.py", "lejepa_loss"): 5,  # shapes of the objective's own tensors
    ("objectives/sigreg.py", "epps_pulley"): 1,  # shape of the objective's own tensor
    ("objectives/sigreg.py", "sigreg"): 1,  # shapes of the objective's own tensors
    ("sources.py", "forward"): 1,  # the raw-pixel reference is never asked for kept tokens
}


def _value_error_raises(path: Path) -> list[tuple[str, int]]:
    """``(enclosing function, line)`` of every ``raise ValueError(...)`` (or ``raise ValueError``) in ``path``."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else where
            if isinstance(child, ast.Raise) and child.exc is not None:
                target = child.exc.func if isinstance(child.exc, ast.Call) else child.exc
                if isinstance(target, ast.Name) and target.id == "ValueError":
                    found.append((where, child.lineno))
            visit(child, name)

    visit(ast.parse(path.read_text()), "<module>")
    return found


def test_no_plain_value_error_is_raised_outside_the_internal_sites():
    """A message meant for the user is a ``UserError`` subclass (``jepa.errors``), so the CLI shows it
    as one line; a plain ``ValueError`` is reserved for the internal invariants listed above."""
    counts: dict[tuple[str, str], list[int]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for where, line in _value_error_raises(path):
            counts.setdefault((rel, where), []).append(line)
    unexpected = {f"jepa/{rel}:{lines[0]} ({where})": len(lines) for (rel, where), lines in counts.items()
                  if len(lines) > INTERNAL_VALUE_ERRORS.get((rel, where), 0)}
    assert not unexpected, ("raise a jepa.errors.UserError subclass (ConfigError, DataError, CheckpointError, "
                            f"PluginError) for messages meant for the user: {unexpected}")
    stale = {key: n for key, n in INTERNAL_VALUE_ERRORS.items() if len(counts.get(key, [])) < n}
    assert not stale, f"allow-list entries with fewer raises than listed (trim them): {stale}"


def test_the_plugin_templates_raise_user_errors():
    """``jepa new-modality`` writes code plugin authors start from: it raises jepa.errors types too."""
    for template in sorted((ROOT / "scaffold" / "templates").glob("*.tmpl")):
        assert not re.search(r"raise ValueError\b", template.read_text()), template.name
