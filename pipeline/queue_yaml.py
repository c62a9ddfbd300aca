"""Read a queue file's YAML safely: no duplicate keys, no alias bombs, no deep nesting, no huge files.

``yaml.safe_load`` accepts documents that a queue file must not be:

- a key given twice in one mapping (``epochs: 1`` ... ``epochs: 50``, or two
  ``experiments:`` lists) silently keeps the last value;
- a "billion laughs" document (nine anchors, each a list of nine aliases of the
  previous one) composes instantly because PyYAML shares aliased objects, but
  the first thing that walks it (an error message's ``repr``, ``json.dumps`` of
  the config hash, a deep copy, the ``<<`` merge of a mapping) expands it to
  10**9 nodes: minutes of CPU, then ``MemoryError`` or the OOM killer;
- 100,000 nested brackets end in a ``RecursionError`` in the composer.

:class:`QueueLoader` refuses each of these while composing, before anything
is built, with the line (and column) of the problem. Anchors, aliases and
merge keys (``<<: *base``) keep working: they are bounded by the number of
nodes the document has once every alias is expanded (:data:`MAX_NODES`), not
forbidden. An alias of a node that contains it (a recursive structure) is
refused. Keys brought in by a merge may be overridden by the mapping's own keys,
as YAML intends; only keys written twice in the same mapping are duplicates.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, ScalarNode
from yaml.resolver import Resolver

from pipeline.errors import QueueError

# A real queue file is a few kilobytes; these bounds are 100-1000x that and keep
# reading any file under about a second.
MAX_BYTES = 1_000_000
# Nodes of the document with every alias expanded (a 50-experiment queue has a few thousand).
# Building nodes in Python costs about 10 us each, so this also bounds the time to read any file.
MAX_NODES = 20_000
# A queue is at most 5 levels deep (root, experiments, experiment, section, list).
MAX_DEPTH = 32

MERGE_TAG = "tag:yaml.org,2002:merge"


class QueueYAMLError(yaml.MarkedYAMLError, QueueError):
    """A document that is valid YAML but not acceptable as a queue file (message has the line)."""


if getattr(yaml, "__with_libyaml__", False):
    from yaml.cyaml import CParser

    class _SafeBase(Composer, CParser, SafeConstructor, Resolver):
        """libyaml's parser (C: scanning a large file takes milliseconds, not seconds) under PyYAML's
        Python composer, whose :meth:`compose_node` :class:`QueueLoader` can watch. Composer comes
        first so that its methods replace CParser's all-in-C composition."""

        def __init__(self, stream):
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
else:  # pragma: no cover - PyYAML built without libyaml
    _SafeBase = yaml.SafeLoader


class QueueLoader(_SafeBase):
    """A safe loader that refuses duplicate keys, alias bombs, recursive aliases and deep nesting.

    Every problem is a :class:`QueueYAMLError` whose ``problem_mark`` points at it.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0  # nodes so far, each alias counted as the size of what it stands for
        self._sizes = {}  # id(node) -> expanded size, for finished nodes that carry an anchor

    def _count(self, n: int, mark) -> None:
        self._expanded += n
        if self._expanded > MAX_NODES:
            raise QueueYAMLError(
                None, None,
                f"the document expands to more than {MAX_NODES:,} values (aliases counted as what they "
                f"repeat); a queue file needs far fewer - is an alias repeated in a loop (a 'billion laughs' "
                f"document)?", mark)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise QueueYAMLError(
                    None, None,
                    f"alias *{event.anchor} is inside the node its anchor names (a recursive structure); "
                    f"a queue file cannot contain one", event.start_mark)
            self._count(size, event.start_mark)
            return node
        event = self.peek_event()
        if event.anchor is not None and event.anchor in self.anchors:
            first = self.anchors[event.anchor].start_mark
            raise QueueYAMLError(None, None, f"anchor &{event.anchor} is defined twice (first at line "
                                             f"{first.line + 1}); give each anchor its own name", event.start_mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise QueueYAMLError(
                None, None,
                f"nested more than {MAX_DEPTH} levels deep; a queue file needs at most 5 "
                f"(experiments -> experiment -> section -> value)", event.start_mark)
        self._count(1, event.start_mark)
        before = self._expanded
        node = super().compose_node(parent, index)
        self._depth -= 1
        if event.anchor is not None:
            self._sizes[id(node)] = self._expanded - before + 1
        if isinstance(node, MappingNode):
            self._check_duplicates(node)
        return node

    def _check_duplicates(self, node: MappingNode) -> None:
        """Refuse a key written twice in this mapping (merged-in keys are not written here)."""
        first = {}
        for key_node, _ in node.value:
            key = self._key_identity(key_node)
            if key is None:
                continue
            if key in first:
                shown = "<<" if key_node.tag == MERGE_TAG else key_node.value
                raise QueueYAMLError(
                    None, None,
                    f"duplicate key {shown!r} (first at line {first[key].line + 1}); "
                    f"YAML would silently keep only the last value", key_node.start_mark)
            first[key] = key_node.start_mark

    def _key_identity(self, key_node) -> Any:
        """The key as the mapping will hold it (so ``1`` and ``1.0`` clash as in a dict); None: not comparable."""
        if not isinstance(key_node, ScalarNode):
            return None
        if key_node.tag == MERGE_TAG:
            return ("<<merge>>",)
        try:
            key = self.construct_object(key_node)
            hash(key)
        except Exception:  # an unconstructable or unhashable key is reported when the document is built
            return (key_node.tag, key_node.value)
        return key

    def construct_object(self, node, deep=False):
        # Python's own limits surface as ValueError / OverflowError, not YAML errors: int('1' * 5000)
        # (more than 4300 digits), a date such as 2026-02-30. Report them with their line.
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, OverflowError, TypeError) as err:
            raise QueueYAMLError(None, None, f"cannot read this value: {err}", node.start_mark) from None


# YAML 1.1 (PyYAML) reads 1e-3 and 1e5 as strings: its floats need a dot. A queue's learning_rate: 1e-3 is a number
# (YAML 1.2), so the exponent form is a float here too; integers and dotted floats resolve as before.
QueueLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                  re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_text(text: str) -> Any:
    """Parse one YAML document with :class:`QueueLoader`.

    Raises
    ------
    yaml.YAMLError
        :class:`QueueYAMLError` for the refusals above; the usual YAML errors otherwise.
        A ``RecursionError`` from an unforeseen path is turned into a :class:`QueueYAMLError`.
    """
    loader = QueueLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise QueueYAMLError(None, None, f"nested too deeply to read (more than {MAX_DEPTH} levels)", None) from None
    finally:
        loader.dispose()
