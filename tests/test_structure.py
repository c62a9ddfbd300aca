"""The package's structure: only pipeline/layout.py spells the names of the files under output/."""

import ast
import pathlib

import pytest

from pipeline import layout

PACKAGE = pathlib.Path(layout.__file__).parent

def _file_names():
    """Every file name under output/ that layout.py defines (``oof.csv``, ``.queue.lock``, ``roc.png``, ...).

    Folder names (``blend``, ``state``, ``plots``) are plain words that other code uses as dictionary keys and
    status values, so they are left out: their paths are checked through the file names inside them.
    """
    every = (layout.QUEUE_LEVEL_NAMES | layout.QUEUE_FILES | layout.EXPERIMENT_FILES | layout.FOLD_FILES
             | layout.BLEND_FOLDER_FILES | layout.FIGURES | {layout.CACHE_MANIFEST})
    return {name for name in every if "." in name}


def _docstrings(tree):
    """The docstring nodes of the module, its classes and functions (prose, not paths)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                yield first.value


def spelled_file_names(source: str, names) -> list:
    """``[(line, name)]`` for every string constant in ``source`` (an f-string's constant parts each on their
    own) that is one of ``names``, also with path separators around it (``f"{folder}/oof.csv"``).

    Messages that mention a file among other words are prose and pass; a path built from a literal does not.
    """
    tree = ast.parse(source)
    skip = {id(node) for node in _docstrings(tree)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if node.value.strip("/") in names:
                found.append((node.lineno, node.value.strip("/")))
    return sorted(found)


def test_the_checked_names_include_every_kind_of_output():
    names = _file_names()
    assert {"oof.csv", "done.json", "status.json", "weights.json", "report.html", "manifest.json", "roc.png",
            ".queue.lock"} <= names
    assert "blend" not in names and "state" not in names


@pytest.mark.parametrize("source, found", [
    ('path = os.path.join(exp_dir, "oof.csv")', [(1, "oof.csv")]),
    ('path = f"{exp_dir}/done.json"', [(1, "done.json")]),
    ('"""Writes oof.csv."""\nx = 1  # and "oof.csv" in a comment', []),
    ('def f():\n    """Reads done.json."""\n    return "done"', []),
    ('log.warning("%s: missing; left out of output/oof.csv now", path)', []),
    ('x = layout.experiment_file(exp_dir, layout.OOF)', []),
])
def test_the_check_finds_paths_not_prose(source, found):
    assert spelled_file_names(source, _file_names()) == found


def test_only_the_layout_module_spells_output_file_names():
    names = _file_names()
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE.parent).as_posix()
        if module == "pipeline/layout.py":
            continue
        for line, name in spelled_file_names(path.read_text(), names):
            offenders.append(f"{module}:{line}: {name!r}")
    assert not offenders, ("spell these names through pipeline.layout (its constants and path functions):\n"
                           + "\n".join(offenders))


def _imported_modules(path: pathlib.Path) -> set:
    """Every ``pipeline...`` module a file imports, at module level or inside functions (``from pipeline import x``
    counts as ``pipeline.x``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in out if m.startswith("pipeline.")}


@pytest.mark.parametrize("package, forbidden", [
    ("blend", ("pipeline.queue", "pipeline.report")),
    ("report", ("pipeline.queue", "pipeline.blend")),
])
def test_blend_and_report_import_neither_the_queue_nor_each_other(package, forbidden):
    """The queue runs the blend and the report; they share only bottom modules (layout, status, results)."""
    found = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for module in sorted(_imported_modules(path)):
            if module.startswith(forbidden):
                found.append(f"{path.relative_to(PACKAGE.parent).as_posix()} imports {module}")
    assert not found, "\n".join(found)
