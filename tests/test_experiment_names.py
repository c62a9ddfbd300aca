"""Experiment names that would pass validation and crash later are refused up front (issue 14, class 5).

A name becomes ``output/<name>/`` beside the queue's own outputs and a column
of ``output/oof.csv``, so it must be a short, plain file name that collides
with none of them, also on a case-insensitive filesystem.
"""

import pytest

from pipeline import layout
from pipeline.config import ConfigError, parse_queue

DATA = {"name": "synthetic_whale"}


def problems(*names):
    raw = {"experiments": [{"name": n, "data": DATA, "features": "mel", "model": "inceptiontime"} for n in names]}
    try:
        parse_queue(raw, source="queue.yaml", base_dir="/nonexistent")
    except ConfigError as err:
        return err.problems
    return []


@pytest.mark.parametrize("name", sorted(n for n in layout.QUEUE_LEVEL_NAMES if not n.startswith(".")))
def test_every_queue_level_output_name_is_refused(name):
    """Generated from pipeline.layout, which the writers use: a new output file is refused automatically."""
    for spelling in (name, name.upper(), name.capitalize()):
        found = problems(spelling)
        assert len(found) == 1 and found[0].startswith("experiments[0].name: ") and "reserved" in found[0], found


@pytest.mark.parametrize("name, words", [
    ("oof.csv", "reserved"),
    ("Queue.Log", "reserved"),
    ("report.html", "reserved"),
    ("cache\n", "not a safe name"),  # re.match with `$` let a trailing newline through
    ("ok\n", "not a safe name"),
    ("a" * 300, "300 characters; at most 100"),
    (".hidden", "not a safe name"),
    ("..", "not a safe name"),
    ("-rf", "not a safe name"),
    ("a/b", "not a safe name"),
    ("a b", "not a safe name"),
])
def test_unsafe_names_are_refused(name, words):
    found = problems(name)
    assert len(found) == 1 and found[0].startswith("experiments[0].name: ") and words in found[0], found


@pytest.mark.parametrize("name", ["a", "_x", "cnn1d.v2", "a-b_c", "x" * layout.MAX_NAME_LENGTH, "train", "caches"])
def test_plain_names_are_accepted(name):
    assert problems(name) == []


def test_names_differing_only_in_case_are_duplicates():
    """On a case-insensitive filesystem the two would share one folder."""
    found = problems("Model_A", "model_a")
    assert found == [found[0]] and found[0].startswith("experiments[1].name: duplicate name 'model_a'")
    assert "experiments[0].name" in found[0]
