"""The package's import graph: no circle (between modules or between packages) and no import from a lower layer
into a higher one. Imports are read with ``ast`` from every module: top-level, inside functions (lazy) and under
``TYPE_CHECKING``. Importing ``a.b.c`` also runs the ``__init__`` of ``a.b`` (unless the importer lives inside
``a.b``, whose ``__init__`` has then already run), so such an import counts as an edge to that ``__init__`` too.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

import lit_distill

ROOT = Path(lit_distill.__file__).parent
TOP = "lit_distill"

# Bottom to top. A module may import from its own layer or a lower one; ``x.*`` is the package x and all below it.
# The most specific entry wins (``lit_distill.losses.fused.*`` over ``lit_distill.losses.*``).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("lit_distill.outputs", "lit_distill.batch", "lit_distill.weights")),
    # checks, divergence names and the per-row divergences shared by the formulas, the fused path and the cache
    ("loss arguments", ("lit_distill.losses.arguments", "lit_distill.losses.divergence_rows")),
    ("fused loss", ("lit_distill.losses.fused.*",)),
    ("formulas", ("lit_distill.losses.functional.*",)),  # re-exports fused_linear_kd: one way, above fused
    ("strategies", ("lit_distill.losses.*",)),
    # The fsdp2 strategy and its plan; filling big weights shard by shard and gathering them back.
    ("sharding", ("lit_distill.sharding.strategy", "lit_distill.sharding.fill")),
    ("model wrapping", ("lit_distill.sharding.*",)),  # wrap: how configure_model shards, compiles and fills the models
    (
        "module parts",
        (
            "lit_distill.features",
            "lit_distill.guard",
            "lit_distill.checks",
            "lit_distill.metrics",
            "lit_distill.teacher",
            "lit_distill.export",
        ),
    ),  # fmt: skip
    ("module", ("lit_distill.module", "lit_distill")),  # the package's __init__ re-exports the module
    ("teacher cache", ("lit_distill.cache.*",)),
    ("data", ("lit_distill.data.*",)),
    ("models", ("lit_distill.models.*",)),
    ("generation", ("lit_distill.generation.*",)),
    ("quantization", ("lit_distill.quantization.*",)),  # torchao QAT/PTQ and quantized exports; builds models
    ("callbacks", ("lit_distill.callbacks.*",)),
    ("cli", ("lit_distill.cli.*",)),
]


# ------------------------------------------------------------------------------------------ reading
def module_files(root: Path = ROOT, top: str = TOP) -> dict[str, Path]:
    """``{dotted module name: file}``; a package is named by its ``__init__.py``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((top, *parts))] = path
    return found


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every ``lit_distill`` name imported anywhere in ``source``; ``from a import b`` gives ``a.b``, which resolves
    to ``a`` when ``b`` is not a module (see :func:`import_graph`)."""
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {n for n in names if n == TOP or n.startswith(TOP + ".")}


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: modules whose code its imports run}``: direct imports plus the ``__init__`` they pass through."""
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path.read_text(), module, path.name == "__init__.py"):
            while name not in files:  # ``from pkg import function``: the module is the longest known prefix
                name = name.rpartition(".")[0]
            targets.add(name)
        graph[module] = induced(module, targets)
    return graph


def induced(module: str, targets: Iterable[str]) -> set[str]:
    """``targets`` plus each package ``__init__`` that importing them runs, outside ``module``'s own packages."""
    own = set(ancestors(module))
    edges = set()
    for target in targets:
        edges.update(p for p in ancestors(target) if p not in own)
        edges.add(target)
    edges.discard(module)
    return edges


# ------------------------------------------------------------------------------------------ checking
def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node, or a node importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def package_graphs(graph: dict[str, set[str]]) -> dict[str, dict[str, set[str]]]:
    """For each package, the graph between its direct children (modules, and subpackages as one node each)."""
    graphs: dict[str, dict[str, set[str]]] = {}
    for source, targets in graph.items():
        for target in targets:
            a, b = source.split("."), target.split(".")
            common = 0
            while common < min(len(a), len(b)) and a[common] == b[common]:
                common += 1
            if common in (len(a), len(b)):
                continue  # a package's __init__ and its own children: not between siblings
            parent = ".".join(a[:common])
            child_a, child_b = ".".join(a[: common + 1]), ".".join(b[: common + 1])
            graphs.setdefault(parent, {}).setdefault(child_a, set()).add(child_b)
    return graphs


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> int | None:
    best, best_len = None, -1
    for i, (_, patterns) in enumerate(layers):
        for pattern in patterns:
            base = pattern.removesuffix(".*")
            hit = module == base or (pattern.endswith(".*") and module.startswith(base + "."))
            if hit and len(base) > best_len:
                best, best_len = i, len(base)
    return best


def layer_violations(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    bad = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(source, layers) < layer_of(target, layers):
                low, high = layers[layer_of(source, layers)][0], layers[layer_of(target, layers)][0]
                bad.append(f"{source} ({low}) imports {target} ({high})")
    return bad


# ------------------------------------------------------------------------------------------ the package
@pytest.fixture(scope="module")
def graph():
    return import_graph(module_files())


def test_every_module_has_a_layer(graph):
    assert [m for m in graph if layer_of(m) is None] == []


def test_no_import_circle_between_modules(graph):
    assert find_cycles(graph) == []


def test_no_import_circle_between_packages(graph):
    assert {package: find_cycles(g) for package, g in package_graphs(graph).items() if find_cycles(g)} == {}


def test_no_lower_layer_imports_a_higher_one(graph):
    assert layer_violations(graph) == []


MAX_LINES = 300
MAX_ROOT_MODULES = 11  # __init__ included: a reader sees the package's concerns at a glance


def test_no_module_is_over_the_size_limit():
    long = {
        str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these modules (over {MAX_LINES} lines): {long}"


def test_the_package_root_keeps_few_modules():
    modules = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(modules) <= MAX_ROOT_MODULES, modules


def test_benchmarks_import_as_a_package_without_path_edits():
    benchmarks = ROOT.parent / "benchmarks"
    edits = [str(p.relative_to(benchmarks)) for p in benchmarks.rglob("*.py") if "sys.path" in p.read_text()]
    assert edits == []


def test_the_graph_sees_the_known_edges(graph):
    # Lazy (function-level) and TYPE_CHECKING imports count, and so do the __init__s an import runs.
    assert "lit_distill.losses.fused" in graph["lit_distill.losses.functional"]
    assert "lit_distill.losses.fused.spec" in graph["lit_distill.losses.fused.triton_kernel"]  # TYPE_CHECKING
    assert "lit_distill.losses.fused" in graph["lit_distill.losses.sequence"]  # lazy, inside a method
    assert "lit_distill.data" in graph["lit_distill.models.hf"]  # data/__init__ runs for data.tokenizers
    assert len(graph) > 60


# ------------------------------------------------------------------------------------------ the checks fail
def test_reading_sees_lazy_type_checking_and_relative_imports():
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lit_distill.module import X\n"
        "def f():\n    import lit_distill.cli\n    from . import sibling\n    from ..losses import base\n"
    )
    assert imported_names(source, "lit_distill.data.text", is_package=False) == {
        "lit_distill.module.X",
        "lit_distill.cli",
        "lit_distill.data.sibling",
        "lit_distill.losses.base",
    }


def test_a_circle_is_found():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a"}}) == [["a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_a_circle_through_a_package_init_is_found():
    # fused importing one formula module runs functional/__init__, which imports fused: the circle this layout broke.
    fake = {
        "lit_distill.losses.functional": {"lit_distill.losses.fused"},
        "lit_distill.losses.fused": {"lit_distill.losses.fused.linear_kd"},
        "lit_distill.losses.fused.linear_kd": induced(
            "lit_distill.losses.fused.linear_kd", ["lit_distill.losses.functional._common"]
        ),
        "lit_distill.losses.functional._common": set(),
    }
    assert find_cycles(fake) == [
        ["lit_distill.losses.functional", "lit_distill.losses.fused", "lit_distill.losses.fused.linear_kd"]
    ]


def test_a_circle_between_packages_is_found():
    # No module circle, but data -> models and models -> data: the two packages depend on each other.
    fake = {
        "lit_distill.data.sentences": {"lit_distill.models.encoder"},
        "lit_distill.models.hf": {"lit_distill.data.tokenizers"},
    }
    assert find_cycles(fake) == []
    graphs = package_graphs(fake)
    assert find_cycles(graphs["lit_distill"]) == [["lit_distill.data", "lit_distill.models"]]


def test_a_lower_layer_importing_a_higher_one_is_found():
    fake = {"lit_distill.losses.functional.divergences": {"lit_distill.module", "lit_distill.losses.arguments"}}
    assert layer_violations(fake) == [
        "lit_distill.losses.functional.divergences (formulas) imports lit_distill.module (module)"
    ]
    assert (
        layer_of("lit_distill.losses.fused.spec")
        < layer_of("lit_distill.losses.functional")
        < layer_of("lit_distill.losses.logit")
    )
    assert layer_of("lit_distill.somewhere_new") is None


def test_contributing_names_every_module():
    """CONTRIBUTING's map is how a newcomer finds a file: a module it does not name is a module nobody finds."""
    text = (ROOT.parent / "CONTRIBUTING.md").read_text(encoding="utf-8")
    # the map section only: short names such as "fit" or "text" occur all over the rest of the file
    start = text.index("## Where things are")
    text = text[start : text.index("\n## ", start)]
    modules = [p for p in ROOT.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    unnamed = [str(p.relative_to(ROOT.parent)) for p in modules if not re.search(rf"\b{re.escape(p.stem)}\b", text)]
    assert not unnamed, f"add these modules to CONTRIBUTING.md's map: {unnamed}"
