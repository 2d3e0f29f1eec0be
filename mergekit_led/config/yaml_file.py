"""The one YAML reader of the package: merge configs, GRID.yml and EVAL.yml.

Every YAML the package reads is parsed here, the same way: safe YAML, its
alias expansion bounded (a "billion laughs" of a few lines is refused before
anyone walks it), and a key written twice in one mapping refused with the key
and both lines (PyYAML keeps the last silently: a second ``harmful:`` would
replace the first). ``read_yaml`` adds the file checks (a regular file, UTF-8)
and turns each failure into one line of the caller's error class naming the
file.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple, Type

import yaml

from mergekit_led.errors import ConfigError, LEDError

# How many YAML nodes a document may expand to once its aliases (``*name``) are
# replaced by what they refer to. The composed document is small however many
# aliases it holds, but every consumer walks the expanded tree (mergekit's
# schema validation, our checks), so a "billion laughs" of a few lines takes
# minutes: refused before anyone walks it. Real configs with hundreds of slices
# stay far below.
MAX_EXPANDED_NODES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping naming one key twice."""

    what = "YAML"

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self._refuse_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)

    def _refuse_duplicate_keys(self, node: yaml.MappingNode) -> None:
        # Only the keys written in this mapping: ``<<: *defaults`` merges are
        # YAML's way to override on purpose and stay allowed.
        seen: Dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeConstructor reports it
                continue
            if first is not None:
                raise ConfigError(
                    f"{self.what} line {line}: key {key!r} is given twice (first on line "
                    f"{first}); YAML would keep only the last. Remove one."
                )
            seen[key] = line


def load_yaml_bounded(source: str, *, what: str, limit: int = MAX_EXPANDED_NODES) -> Any:
    """``yaml.safe_load(source)``, refusing a key given twice in one mapping and
    a document whose aliases expand it beyond ``limit`` nodes, or that refers
    to itself. ``what`` names the document in errors (``ConfigError``)."""
    loader = _StrictLoader(source)
    loader.what = what
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = expanded_size(node, limit)
        if size is None:
            raise ConfigError(f"{what} refers to itself through a YAML alias; remove the cycle.")
        if size > limit:
            raise ConfigError(
                f"{what} expands to more than {limit:,} YAML nodes through its aliases "
                "(anchors `&name` used as `*name`); refused before reading it. Write the "
                "values out, or use fewer nested aliases."
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def expanded_size(root: yaml.Node, limit: int) -> Optional[int]:
    """Nodes of the tree ``root`` stands for with every alias expanded, counted
    without expanding (each composed node once), capped at ``limit + 1``; None
    for a node that contains itself. Iterative: YAML may nest deeper than
    Python's recursion limit."""
    sizes: Dict[int, int] = {}
    open_nodes = set()
    stack: List[Tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            total = 1 + sum(sizes[id(child)] for child in _children(node))
            sizes[key] = min(total, limit + 1)
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            return None
        open_nodes.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                return None
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: yaml.Node) -> List[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def read_yaml(path: str, *, what: str, error: Type[LEDError]) -> Any:
    """The parsed contents of ``path``; ``what`` names the file in errors
    (e.g. ``"Evaluation spec"``)."""
    if not os.path.isfile(path):  # a FIFO or device would block: regular files only
        raise error(f"{what} {path} does not exist or is not a regular file.")
    try:
        with open(path, encoding="utf-8") as f:
            return load_yaml_bounded(f.read(), what=f"{what} {path}")
    except ConfigError as cause:
        raise error(str(cause)) from cause
    except UnicodeDecodeError as cause:
        raise error(f"{what} {path} is not UTF-8 text ({cause.reason}).") from cause
    except yaml.YAMLError as cause:
        reason = " ".join(str(cause).split())
        raise error(f"{what} {path} is not valid YAML: {reason}") from cause
