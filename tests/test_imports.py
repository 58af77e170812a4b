"""The package's modules import each other without cycles, function-level imports included.

Every ``import`` in every module of ``agentgym`` (with ``agentgym.envs`` and ``agentgym.algos``) is an edge,
wherever it stands (module level or inside a function), except imports under ``if TYPE_CHECKING:`` (never run).
``from package import submodule`` is an edge to the submodule. A cycle is a set of modules each reachable from the
others.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ((ROOT / "agentgym", "agentgym"), (ROOT / "envs", "agentgym.envs"), (ROOT / "algos", "agentgym.algos"))

def modules() -> dict[str, Path]:
    out = {}
    for base, package in PACKAGES:
        for path in base.rglob("*.py"):
            parts = [p for p in path.relative_to(base).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            yield from (n for child in node.orelse for n in _imports(ast.Module(body=[child], type_ignores=[])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else known(base) for a in node.names]
            graph[name].update(t for t in targets if t is not None and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.add(frozenset(comp))
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == {frozenset("abc")}
    assert cycles({"a": {"b"}, "b": set()}) == set()


def test_the_graph_sees_function_level_relative_and_submodule_imports():
    graph = import_graph()
    assert "agentgym.rollout.evaluation" in graph["agentgym.training.trainer"]  # inside Trainer.evaluate
    assert "agentgym.envs.spider_sql.sqlite_worker" in graph["agentgym.envs.spider_sql.sandbox"]
    assert "agentgym.envs.spider_sql" not in graph["agentgym.envs.spider_sql.sandbox"]
    assert "agentgym.algos.config" not in graph["agentgym.algos.advantages"]  # only under TYPE_CHECKING


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


LAYERS = [
    ("env API and models", ["agentgym.core", "agentgym.message_env", "agentgym.chat", "agentgym.registration",
                            "agentgym.vector", "agentgym.models", "agentgym.tiny", "agentgym.options"]),
    ("algorithms", ["agentgym.algos"]),
    ("inference", ["agentgym.engines"]),
    ("serving", ["agentgym.engines.server"]),
    ("agents", ["agentgym.agents"]),
    ("envs", ["agentgym.envs"]),
    ("rollout", ["agentgym.rollout"]),
    ("training", ["agentgym.training"]),
    ("workflow", ["agentgym.workflow"]),
]
"""The stages of docs/architecture.md, bottom up: a module imports only from its own stage or the ones below."""


def layer_of(module: str) -> int | None:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def test_every_module_has_a_stage_and_imports_only_downwards():
    graph = import_graph()
    assert [m for m in graph if m != "agentgym" and layer_of(m) is None] == []
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) -> {t} ({LAYERS[layer_of(t)][0]})"
              for m, targets in graph.items() if m != "agentgym" for t in targets
              if t != "agentgym" and layer_of(t) > layer_of(m)]
    assert upward == []
    assert layer_of("agentgym.engines.server.routes") == 3 and layer_of("agentgym.engines.registry") == 2


def test_every_package_is_installed_by_pyproject():
    """A wheel (``pip install .``, not ``-e``) holds only the packages pyproject.toml lists: every directory with an
    ``__init__.py`` must be one of them, or the installed library fails to import it."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    to_dir = {name: Path(d) for name, d in setuptools["package-dir"].items()}

    def directory(package):
        parts = package.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in to_dir:
                return to_dir[".".join(parts[:n])].joinpath(*parts[n:])
        raise AssertionError(f"{package} has no package-dir")

    listed = {directory(p) for p in setuptools["packages"]}
    found = {init.parent.relative_to(ROOT) for top in set(to_dir.values()) for init in (ROOT / top).rglob("__init__.py")}
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(map(str, found - listed))}"
    assert listed - found == set(), f"pyproject.toml lists packages that do not exist: {sorted(map(str, listed - found))}"
