"""The package's architecture, declared once and checked on every import statement in bench/
(module level and inside functions, by grimp): layers import downwards only, no module imports
itself through a circle, and the public API (bench.api, re-exported by bench/__init__) sits on top
where only the command line reaches it."""
import pkgutil

import grimp
import pytest

import bench

# Highest first. A layer may import any layer below it; modules of one layer may import each other
# (the cycle test keeps that one-directional).
LAYERS = (
    ("cli", "__main__"),
    ("api",),
    ("suite", "tuning", "plugins", "executors", "ray_executor", "testing"),
    ("tasks", "profiling", "report"),
    ("methods", "build", "train"),
    ("models", "data", "presets"),
    ("registry", "store", "metrics", "errors", "device", "distributed", "checkpoints", "search"),
)
API_IMPORTERS = {"bench", "bench.cli", "bench.__main__"}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("bench", cache_dir=None)


def test_every_module_has_a_layer():
    placed = [name for layer in LAYERS for name in layer]
    assert len(placed) == len(set(placed)), "a module is placed in two layers"
    children = {m.name for m in pkgutil.iter_modules(bench.__path__)}
    assert children == set(placed), (
        f"not placed: {sorted(children - set(placed))}; no such module: "
        f"{sorted(set(placed) - children)}")


def test_layers_import_downwards_only(graph):
    layers = [grimp.Layer(*names, independent=False) for names in LAYERS]
    illegal = graph.find_illegal_dependencies_for_layers(layers, containers={"bench"})
    lines = [f"{dep.importer} imports {dep.imported}: " + "; ".join(
        " -> ".join(["|".join(sorted(r.heads)), *r.middle, "|".join(sorted(r.tails))])
        for r in dep.routes) for dep in sorted(illegal)]
    assert not illegal, "\n".join(lines)


def test_no_import_cycles(graph):
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                cycles.add(" -> ".join((module,) + back))
    assert not cycles, "\n".join(sorted(cycles))


def test_only_the_command_line_imports_the_public_api(graph):
    assert graph.find_modules_that_directly_import("bench.api") <= API_IMPORTERS
    assert graph.find_modules_that_directly_import("bench") <= API_IMPORTERS - {"bench"}
