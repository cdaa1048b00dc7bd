"""The import graph is the pipeline: no cycles between project modules, no upward imports.

Every ``.py`` file of the project is parsed (``ast``, nothing is imported) and every
``import`` / ``from ... import`` in it counts, inside functions too: an import hidden in
a function is still a dependency, it only hides a cycle until run time.

Layers, lowest first; a module may import its own layer and the layers below it:

=========  ==========================================================================
datasets   audio I/O, beat grid, features, stems, caches, pair discovery
contract   the EditPlan contract (DESIGN.md "One contract"), files in envs/: the action
           vocabulary (``envs.actions``), the plan (``envs.plan``), both directions
           between them (``envs.executor``, ``envs.oracle``), the layout and the one
           renderer (``envs.layout``, ``envs.render``, ``envs.quality``), DAW exports
           (``envs.export``). Alignment produces plans and labels in this contract,
           hence below alignment although the files live in envs/
alignment  a raw/edited pair (or a DAW project) -> EditPlan -> action labels
envs       the gymnasium env: observation, reward, context, scripted policies
demo       ``datasets.demo``: scripted users of the tool (they plan with envs and render),
           hence above envs although the user's layout keeps them under datasets/
agent      the policy, checkpoints, the whole-song planner, the report page
pretrain   behaviour cloning + DAgger, the offline-RL baselines
rl         PPO fine-tuning of the pretrained policy (reads pretrain's data builders)
infer      ``agent.infer`` (and ``agent.demo_infer``, ``agent.batch``): edits new songs; the top
bench      benchmarks, may use everything
tests      may use everything, bench included
=========  ==========================================================================

Imports that still go upward are listed, each with its reason, in ``UPWARD_ALLOWED``; an
entry that no longer matches an import fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("datasets", "alignment", "envs", "agent", "pretrain", "rl", "bench", "tests")
#: The EditPlan contract's modules (layer "contract", see the docstring).
CONTRACT = ("envs.actions", "envs.plan", "envs.executor", "envs.oracle", "envs.layout", "envs.render", "envs.quality",
            "envs.export")
LAYERS = ("datasets", "contract", "alignment", "envs", "demo", "agent", "pretrain", "rl", "infer", "bench", "tests")

#: (importer, imported) pairs that go against LAYERS today, with the reason and the fix.
UPWARD_ALLOWED: set[tuple[str, str]] = set()  # empty: every upward import is gone


def layer(module: str) -> str:
    """The layer of a dotted module name (see the module docstring)."""
    if module == "datasets.demo" or module.startswith("datasets.demo."):
        return "demo"
    if module in CONTRACT:
        return "contract"
    if module in ("agent.infer", "agent.demo_infer", "agent.batch"):
        return "infer"
    return module.split(".")[0]


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file, for every .py file of the project packages."""
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = f
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The project module an imported dotted name lands in (its longest known prefix)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(mods: dict[str, Path]) -> set[tuple[str, str, int]]:
    """(importer, imported, line) for every import between two project modules."""
    edges: set[tuple[str, str, int]] = set()
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from ..y import z
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                # "from pkg import name": name is a submodule or an attribute of pkg
                targets = [base if a.name == "*" else f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                hit = _resolve(t, mods)
                if hit is not None and hit != mod:
                    edges.add((mod, hit, node.lineno))
    return edges


def cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for a, b, *_ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def upward(edges) -> set[tuple[str, str, int]]:
    """Imports from a lower layer into a higher one."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    return {(a, b, line) for a, b, line in edges if rank[layer(b)] > rank[layer(a)]}


@pytest.fixture(scope="module")
def edges():
    return import_edges(project_modules())


def test_the_walker_sees_imports_inside_functions(edges):
    pairs = {(a, b) for a, b, _ in edges}
    assert len(pairs) > 300  # the whole project, not an empty walk
    assert ("rl.ppo", "rl.rollout") in pairs and ("envs.reward", "envs.render") in pairs
    # both inside a function body (cold-start imports of the CLI)
    assert ("agent.infer", "envs.render") in pairs and ("envs.render", "envs.quality") in pairs
    assert all(layer(m) in LAYERS for m in project_modules())


def test_no_cycles_between_project_modules(edges):
    assert cycles(edges) == []


def test_no_upward_imports(edges):
    bad = sorted(e for e in upward(edges) if e[:2] not in UPWARD_ALLOWED)
    assert not bad, "upward imports (importer, imported, line), against LAYERS:\n" + "\n".join(map(str, bad))


def test_the_allowlist_holds_only_imports_that_exist(edges):
    found = {e[:2] for e in upward(edges)}
    stale = sorted(UPWARD_ALLOWED - found)
    assert not stale, f"no longer imported upward, remove from UPWARD_ALLOWED: {stale}"


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    """The checks themselves fail on a bad graph (hidden in a function, relative import)."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "envs" / "a.py").write_text("def f():\n    from envs import b\n")
    (tmp_path / "envs" / "b.py").write_text("from . import a\n")
    (tmp_path / "datasets" / "c.py").write_text("import numpy\n\ndef g():\n    import agent.d\n")
    (tmp_path / "agent" / "d.py").write_text("import datasets\n")
    e = import_edges(project_modules(tmp_path))
    assert cycles(e) == [["envs.a", "envs.b"]]
    assert {x[:2] for x in upward(e)} == {("datasets.c", "agent.d")}
