"""The house: physrl's import graph, read from the source with ``ast``, has no circle and no upward import.

Rooms, ground to roof (docs/README.md, each package's ``__init__`` docstring): contract -> sim -> fitting ->
organisms -> experiment -> cli. A module may import from its own room or from a room below it, never from a room
above; and no chain of imports returns to a module it left. Every import counts: module level, inside functions,
under ``TYPE_CHECKING``, and a lazy package's table of exports (``_EXPORTS``: the owner a public name is loaded
from on first use). ``from package import name`` is an edge to the package's ``__init__`` (which in turn leads to
the name's owner), or to the submodule ``package.name`` when there is one.

The packages and their folders are read from pyproject.toml ([tool.setuptools] packages and package-dir), so a
new subpackage is checked as soon as it is installable.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

#: room -> the module-name prefixes it holds, ground to roof (a module's room is its longest matching prefix)
ROOMS: dict[str, tuple[str, ...]] = {
    "contract": ("physrl", "physrl.contract", "physrl._util"),  # "physrl": the bare namespace __init__ only
    "sim": ("physrl.sim",),
    "fitting": ("physrl.fitting",),
    "organisms": ("physrl.organisms", "physrl.integrations"),  # integrations write logs, as organisms do
    "experiment": ("physrl.experiment",),
    "cli": ("physrl.cli", "physrl.__main__"),
}
LEVEL = {room: level for level, room in enumerate(ROOMS)}


def package_folders() -> dict[str, Path]:
    """Installed package name -> its source folder, from pyproject.toml."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir = setuptools.get("package-dir", {})
    folders = {}
    for package in setuptools["packages"]:
        prefix = max((p for p in package_dir if package == p or package.startswith(p + ".")), key=len, default=None)
        if prefix is None:
            folders[package] = ROOT / package.replace(".", "/")
        else:
            tail = package[len(prefix):].lstrip(".")
            folders[package] = ROOT / package_dir[prefix] / tail.replace(".", "/") if tail else ROOT / package_dir[prefix]
    return folders


def source_modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (source file, is a package ``__init__``) for every module the wheel installs."""
    modules = {}
    for package, folder in package_folders().items():
        for path in sorted(folder.glob("*.py")):
            if path.name == "__init__.py":
                modules[package] = (path, True)
            else:
                modules[f"{package}.{path.stem}"] = (path, False)
    return modules


def _lazy_exports(tree: ast.Module) -> list[str]:
    """The owners named in a package's ``_EXPORTS = {name: owner}`` table (relative when they start with ``_``)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            return [v.value for v in node.value.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return []


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (any level of the file; see the module docstring)."""
    modules = source_modules()
    graph: dict[str, set[str]] = {}

    def resolve(target: str) -> str | None:  # the project module a dotted name lands on (longest known prefix)
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module
                for alias in node.names:
                    submodule = f"{origin}.{alias.name}"
                    targets.add(submodule if submodule in modules else origin)
        if is_package:
            targets.update(f"{name}.{owner}" if owner.startswith("_") else owner for owner in _lazy_exports(tree))
        edges = {resolve(t) for t in targets if t == "physrl" or t.startswith("physrl.")}
        graph[name] = {e for e in edges if e is not None and e != name}
    return graph


def room_of(module: str) -> str:
    prefixes = [(p, room) for room, ps in ROOMS.items() for p in ps
                if module == p or (p != "physrl" and module.startswith(p + "."))]  # the namespace itself: exactly
    if not prefixes:
        raise AssertionError(f"{module} belongs to no room of the house; add it to ROOMS and docs/README.md")
    return max(prefixes, key=lambda pr: len(pr[0]))[1]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_graph_reads_the_code_it_claims_to():
    """The builder sees real edges (a test of the test: an empty graph would pass everything below)."""
    graph = import_graph()
    assert "physrl.fitting._fit" in graph and "physrl.sim._model" in graph
    assert "physrl.sim._model" in graph["physrl.sim._integrate"]  # a module-level relative import
    assert graph["physrl.organisms"]  # a lazy package's export table counts
    assert any(target.startswith("physrl.contract") for target in graph["physrl.fitting._fit"])
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_module_imports_from_a_room_above_it():
    upward = sorted(f"{module} ({room_of(module)}) imports {target} ({room_of(target)})"
                    for module, targets in import_graph().items() for target in targets
                    if LEVEL[room_of(target)] > LEVEL[room_of(module)])
    assert not upward, "imports from a room above:\n" + "\n".join(upward)


def test_the_contract_is_a_leaf():
    """The ground floor imports nothing of the project outside it."""
    graph = import_graph()
    for module, targets in graph.items():
        if room_of(module) == "contract":
            assert all(room_of(t) == "contract" for t in targets), (module, targets)


@pytest.mark.parametrize("package", sorted(package_folders()))
def test_every_package_says_what_it_holds_and_may_import(package):
    """Each package's ``__init__`` opens with a docstring with a line ``Room: <room>; may import: <rooms>.`` that
    names the package's room and exactly the rooms at or below it."""
    docstring = ast.get_docstring(ast.parse((package_folders()[package] / "__init__.py").read_text()))
    assert docstring, f"{package}/__init__.py has no docstring"
    match = re.search(r"^Room: (\w+); may import: ([^.]*)\.", docstring, re.MULTILINE)
    assert match, f"{package}'s docstring has no line 'Room: <room>; may import: <rooms>.'"
    room, allowed = match.group(1), [r.strip() for r in match.group(2).replace(" and ", ", ").split(",") if r.strip()]
    assert room == room_of(package)
    below = [r for r in ROOMS if LEVEL[r] < LEVEL[room]]
    assert allowed == (["nothing of the project but its own room"] if not below else below + ["its own room"]), allowed


#: the experiment's modules in pipeline order (plan -> train -> fit & freeze -> analyse -> report, then the
#: driver and its command line): a module imports only from modules before it, so data flows one way
EXPERIMENT_ORDER = ("ray_resources", "executors", "config", "runs", "words", "replication", "scaling", "freeze",
                    "analysis", "report", "figures", "scaling_figures", "headline", "takeoff", "decisive", "decisive_run",
                    "decisive_analysis", "run", "cli")


def test_the_experiment_flows_one_way_through_its_stages():
    graph = import_graph()
    stage = {f"physrl.experiment.{name}": i for i, name in enumerate(EXPERIMENT_ORDER)}
    modules = {m for m in graph if m.startswith("physrl.experiment.")}
    assert modules == set(stage), f"experiment modules not in EXPERIMENT_ORDER: {sorted(modules ^ set(stage))}"
    backward = sorted(f"{m} imports {t}" for m in modules for t in graph[m]
                      if t.startswith("physrl.experiment") and stage.get(t, len(stage)) >= stage[m])
    assert not backward, "imports against the pipeline's order:\n" + "\n".join(backward)


def test_the_family_protocol_reaches_only_leaves():
    """organisms' environment protocol imports no config, family or trainer: only the generic stage 1 its default
    ``pretrain`` runs, which itself imports only the organisms' leaves."""
    graph = import_graph()
    assert graph["physrl.organisms._family"] <= {"physrl.organisms._pretrain"}
    assert graph["physrl.organisms._pretrain"] <= {"physrl.organisms._seeds", "physrl.organisms._tokens",
                                                   "physrl.organisms._progress"}
    assert not graph["physrl.organisms._seeds"] and not graph["physrl.organisms._tokens"]
    assert all(m.startswith("physrl.contract") for m in graph["physrl.organisms._progress"])
