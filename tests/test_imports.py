"""The import structure of pipeline/: no cycles, and the data and feature layer stays at the bottom.

Read from the source with :mod:`ast` (nothing is imported), so the tests take
under a second and also see imports inside functions: those run later, but they
tie modules together just the same.
"""

import ast
import pathlib
import textwrap
from dataclasses import dataclass

import pytest

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parent.parent / "pipeline"

# Worker processes build features and read data without TensorFlow; loading it costs seconds and memory per worker.
TENSORFLOW = frozenset({"tensorflow", "keras", "tf_keras", "tensorflow_io", "tensorflow_probability"})
# The stages above the data and features; a prefix also covers the modules a stage is later split into.
UPPER_STAGES = ("pipeline.queue", "pipeline.train", "pipeline.blend", "pipeline.report")
BOTTOM_LAYER = ("pipeline.data", "pipeline.features")


@dataclass(frozen=True)
class Import:
    """One import: ``target`` is a module of the package, or the top-level name of another (numpy, tensorflow)."""

    target: str
    internal: bool  # a module of the parsed package
    at_import: bool  # runs when the importing module is imported (not inside a function)


def module_files(root: pathlib.Path) -> dict:
    """{dotted module name: path} for every ``.py`` file under the package folder ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name,) + path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: pathlib.Path, modules: dict) -> list:
    """Every import in the module ``name`` (file ``path``), relative ones resolved.

    ``from p import x`` imports the module ``p.x`` when there is one, else the
    name ``x`` from ``p`` (an edge to ``p``).
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    own = name.split(".")[0]
    found = []

    def add(target: str, at_import: bool) -> None:
        if target in modules:
            found.append(Import(target, True, at_import))
        elif target.split(".")[0] != own:
            found.append(Import(target.split(".")[0], False, at_import))

    def visit(node: ast.AST, at_import: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, at_import)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            for target in submodules:
                add(target, at_import)
            if len(submodules) < len(node.names) or base not in modules:
                add(base, at_import)
        # A class body runs at import time, a function body only when called.
        body_at_import = at_import and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            visit(child, body_at_import)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), True)
    return found


def import_graph(root: pathlib.Path) -> dict:
    """{module: [Import, ...]} for the package folder ``root``."""
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def reachable(graph: dict, start: str, *, at_import_only: bool = False) -> dict:
    """{module or external name: the module that imports it} for everything ``start`` leads to, ``start`` excluded.

    With ``at_import_only``, what importing ``start`` loads: module-level
    imports only, plus each module's parent packages (Python runs their
    ``__init__`` first).
    """
    via = {}
    todo = [start]
    while todo:
        module = todo.pop()
        edges = [i for i in graph[module] if i.at_import or not at_import_only]
        targets = [i.target for i in edges]
        if at_import_only:
            parts = module.split(".")
            targets += [".".join(parts[:k]) for k in range(1, len(parts))]
        for target in targets:
            if target != start and target not in via:
                via[target] = module
                if target in graph:
                    todo.append(target)
    return via


def chain(via: dict, start: str, end: str) -> str:
    """``start -> ... -> end`` along the ``via`` links of :func:`reachable`."""
    path = [end]
    while path[-1] != start:
        path.append(via[path[-1]])
    return " -> ".join(reversed(path))


def cycles(graph: dict) -> list:
    """Groups (sorted lists) of modules that each lead to all others; [] when the package has no cycle."""
    reach = {module: set(reachable(graph, module)) for module in graph}
    groups = {frozenset({m} | {n for n in reach[m] if n in graph and m in reach[n]}) for m in graph}
    return sorted(sorted(group) for group in groups if len(group) > 1)


def within(module: str, prefixes: tuple) -> bool:
    """``module`` is one of ``prefixes`` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def bottom_layer(graph: dict) -> list:
    return [m for m in graph if within(m, BOTTOM_LAYER)]


# ----------------------------------------------------------------------------- the parser on a known package


@pytest.fixture
def toy(tmp_path):
    """A package ``toy`` whose imports are known: a cycle a -> b -> c -> a through a relative, a
    function-level and a ``from package import module`` import; d imports the attribute ``helper`` of
    ``toy.sub`` and tensorflow at module level; e imports keras inside a function only."""
    files = {
        "__init__.py": "",
        "a.py": "from . import b\nimport numpy as np\n",
        "b.py": "def later():\n    from toy.c import thing\n",
        "c.py": "from toy import a\n",
        "sub/__init__.py": "helper = 1\n",
        "sub/d.py": "from .. import a\nfrom toy.sub import helper\nimport tensorflow.keras as keras\n",
        "sub/e.py": "def f():\n    import keras\n    return keras\n",
    }
    root = tmp_path / "toy"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return import_graph(root)


def test_the_parser_resolves_relative_function_level_and_package_imports(toy):
    edges = {m: {(i.target, i.at_import) for i in imports} for m, imports in toy.items()}
    assert edges["toy.a"] == {("toy.b", True), ("numpy", True)}
    assert edges["toy.b"] == {("toy.c", False)}
    assert edges["toy.c"] == {("toy.a", True)}  # `from toy import a`: the module, not the package
    assert edges["toy.sub.d"] == {("toy.a", True), ("toy.sub", True), ("tensorflow", True)}
    assert edges["toy.sub.e"] == {("keras", False)}


def test_a_cycle_is_found_and_named(toy):
    assert cycles(toy) == [["toy.a", "toy.b", "toy.c"]]
    del toy["toy.b"][:]  # break it
    assert cycles(toy) == []


def test_what_importing_a_module_loads(toy):
    loaded = reachable(toy, "toy.sub.d", at_import_only=True)
    assert {"toy", "toy.sub", "toy.a", "toy.b", "tensorflow", "numpy"} <= set(loaded)
    assert "toy.c" not in loaded  # b imports c only inside a function
    assert chain(loaded, "toy.sub.d", "numpy") == "toy.sub.d -> toy.a -> numpy"
    assert "keras" not in reachable(toy, "toy.sub.e", at_import_only=True)


# ----------------------------------------------------------------------------- the rules for pipeline/


@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE_ROOT)


def test_no_import_cycle_in_the_package(graph):
    found = cycles(graph)
    assert not found, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_data_and_features_load_no_tensorflow(graph):
    """Importing any data or feature module (and so everything it imports at module level) loads no TensorFlow."""
    problems = []
    for module in bottom_layer(graph):
        loaded = reachable(graph, module, at_import_only=True)
        problems += [chain(loaded, module, name) for name in sorted(TENSORFLOW & set(loaded))]
    assert not problems, "TensorFlow loaded by a data or feature module (import it inside the function that " \
                         "needs it):\n" + "\n".join(problems)


def test_data_and_features_never_import_the_stages_above_them(graph):
    problems = [f"{module} -> {i.target}" for module in bottom_layer(graph) for i in graph[module]
                if i.internal and within(i.target, UPPER_STAGES)]
    assert not problems, "data and feature modules import a stage above them:\n" + "\n".join(problems)


def test_the_rules_see_the_whole_package(graph):
    """The rules above hold because they look, not because they see nothing."""
    assert {"pipeline.data.synthetic", "pipeline.features.mel", "pipeline.queue"} <= set(graph)
    assert len(bottom_layer(graph)) >= 15
    assert sum(len(imports) for imports in graph.values()) > 300


def test_the_rfcx_generator_shares_the_store_not_the_whale_generator(graph):
    targets = {i.target for i in graph["pipeline.data.synthetic_rfcx"]}
    assert "pipeline.data.generated_store" in targets
    assert "pipeline.data.synthetic" not in targets


# ----------------------------------------------------------------------------- Ray (issue 16)

RAY_MODULE = "pipeline.executors.ray_tasks"


def test_only_the_ray_executor_imports_ray_and_only_when_it_is_used(graph):
    """A run with the local backend never loads Ray: only the Ray executor imports it, inside its functions,
    and no module imports the Ray executor at import time (the executor registry loads it by name)."""
    problems = [f"{module} imports ray" for module, imports in graph.items() for i in imports
                if i.target == "ray" and (module != RAY_MODULE or i.at_import)]
    problems += [f"{module} imports {RAY_MODULE} at import time" for module, imports in graph.items()
                 for i in imports if i.target == RAY_MODULE and i.at_import]
    assert RAY_MODULE in graph and any(i.target == "ray" for i in graph[RAY_MODULE])
    assert not problems, "\n".join(problems)
