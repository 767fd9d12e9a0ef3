"""Reading recipe YAML strictly, in bounded time and memory.

PyYAML's ``safe_load`` is safe (no objects are built from tags) but lenient in ways that hide
mistakes or hang the process, so recipes and ``--set`` values are read with :func:`load_yaml`:

* a key given twice in one mapping is an error (PyYAML keeps the last one silently); keys
  brought in by a ``<<`` merge may still be overridden, as YAML intends;
* ``1e-3`` is a number (YAML 1.2; PyYAML's YAML 1.1 rules read it as the string ``"1e-3"``);
  dates stay strings;
* a document that expands to more than :data:`MAX_VALUES` values through aliases (a "billion
  laughs" alias bomb) or a text longer than :data:`MAX_BYTES` is refused before anything is built;
* text that is not UTF-8 is refused naming the byte offset, and a character YAML does not allow
  (NUL, ESC and the other control characters but tab and line breaks) naming its line and column.

Every problem is a :class:`YAMLProblem` (a :class:`~jepa.errors.ConfigError`) with a one-line message.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.reader import Reader

from jepa.errors import ConfigError
from jepa.text import printable

MAX_BYTES = 1 << 20
"""Longest recipe text read (1 MiB; real recipes are a few KiB)."""
MAX_VALUES = 100_000
"""Most values (scalars, lists, mappings) a document may expand to, aliases counted each time."""

_MERGE_TAG = "tag:yaml.org,2002:merge"
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class YAMLProblem(ConfigError):
    """The text is not a YAML document this project reads (message: one line, with the place)."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys, reads ``1e-3`` as a float and dates as strings."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key; SafeLoader reports it below
                continue
            if first is not None:
                raise YAMLProblem(f"key {key!r} appears twice in one mapping (line {first.start_mark.line + 1} and "
                                  f"line {key_node.start_mark.line + 1}); keep one of them")
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789"))
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in StrictLoader.yaml_implicit_resolvers.items()
}


def _expanded_size(root: Node) -> int:
    """Values ``root`` expands to, aliases counted every time they are used (memoised per node,
    so an alias bomb is measured without being expanded)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: meeting one again is a recursive alias
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if isinstance(node, ScalarNode):
            sizes[id(node)] = 1
            continue
        children = [n for pair in node.value for n in pair] if isinstance(node, MappingNode) else list(node.value)
        if children_done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            open_nodes.discard(id(node))
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise YAMLProblem(f"a recursive alias (an anchor used inside itself, line {node.start_mark.line + 1})")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def load_yaml(text: str | bytes, where: str) -> Any:
    """One YAML document, read strictly (see the module docstring).

    Args:
        text: the document (bytes must be UTF-8).
        where: names the text in messages (a file name, ``--set key``).

    Raises:
        YAMLProblem: not UTF-8, too long, not valid YAML, a duplicate key, or an alias bomb.
    """
    if len(text) > MAX_BYTES:
        raise YAMLProblem(f"{where}: {len(text):,} bytes, more than a recipe may have ({MAX_BYTES:,}); "
                          "is this the right file?")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YAMLProblem(f"{where}: not UTF-8 text (byte {exc.start}: {text[exc.start:exc.start + 1]!r}); "
                              "save the recipe as UTF-8") from None
    _check_characters(text, where)
    loader = None
    try:
        loader = StrictLoader(text)  # inside the try: its reader raises on characters YAML refuses
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node)
        if size > MAX_VALUES:
            raise YAMLProblem(f"{where}: expands to {size:,} values through YAML aliases (at most {MAX_VALUES:,}); "
                              "remove the repeated aliases (&anchor / *alias)")
        return loader.construct_document(node)
    except YAMLProblem as exc:
        raise YAMLProblem(f"{where}: {exc}" if not str(exc).startswith(where) else str(exc)) from None
    except yaml.YAMLError as exc:
        raise YAMLProblem(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise YAMLProblem(f"{where}: nested too deeply to read") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_characters(text: str, where: str) -> None:
    """Refuse a character that YAML does not allow in a document (the reader's own rule), naming
    its line and column."""
    bad = Reader.NON_PRINTABLE.search(text)
    if bad is None:
        return
    at = bad.start()
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    raise YAMLProblem(f"{where}: line {line}, column {column}: character {printable(bad.group())} "
                      f"(U+{ord(bad.group()):04X}) is not allowed in YAML text; delete it")
