"""The packages of src/prism are layers: every import points down, and no module grows too big.

Read from the source with ``ast`` (nothing is imported), so a wrong import is found before it can
make a cycle at run time. The layers are declared once, in LAYERS; docs/architecture.md draws
them.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PRISM = SRC / "prism"

#: The layers, top first. A package may import any package of a layer below its own, never one
#: of its own layer (other than itself) or above. ``server`` is the module src/prism/server.py;
#: ``prism`` is the package itself (``__version__``).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),  # the `prism` command
    ("server",),  # wiring: builds every part once, owns the top nursery
    ("api",),  # the control plane: REST, WebSocket, page, metrics
    ("frontdoor",),  # a client's connection from its first byte to the splice
    ("branches",),  # the manager split by job, and what it does to a branch
    ("mainsource",),  # how main is made and kept: one strategy per origin
    ("source",),  # a production source's tools: base backup, dump, following, health
    ("storage", "runtime", "durable"),  # drivers behind their Protocols; the journal and state
    ("postgres",),  # the wire codec, SCRAM, connection strings, Prism's own client, binaries
    ("core", "prism"),  # errors, names, events, settings: imported by all, importing no other
)

#: ALLOWANCE, to be emptied: imports that point up today, each with the change that removes it.
#: (importing module, imported package) -> why it is still here.
UPWARD_ALLOWED: dict[tuple[str, str], str] = {}

#: The wire codec is one message model and stays whole; every other module stays under this.
MAX_LINES = 600
EXEMPT_FROM_MAX_LINES = {"postgres/wire.py"}
#: ALLOWANCE, to be emptied: modules over MAX_LINES today, each to be split by its job.
TOO_LONG_ALLOWED: set[str] = set()

_LEVEL = {package: level for level, layer in enumerate(LAYERS) for package in layer}


def _modules() -> dict[str, Path]:
    """Every module of src/prism by its dotted name."""
    found = {}
    for path in sorted(PRISM.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _package(module: str) -> str:
    """The layer package a dotted module belongs to: ``prism.branches.manager`` -> branches."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "prism"


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported prism module, line) for every import in ``path``, at any depth."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "prism":
                # ``from prism import server`` imports a module; ``__version__`` the package.
                found += [(f"prism.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((target, node.lineno))
    return [(name, line) for name, line in found if name == "prism" or name.startswith("prism.")]


def _edges() -> list[tuple[str, str, str, str]]:
    """(importing module, its package, imported package, "file:line") across packages."""
    modules = _modules()
    edges = []
    for module, path in modules.items():
        for imported, line in _imports(module, path):
            source, target = _package(module), _package(imported)
            if target == "prism" and imported != "prism" and imported not in modules:
                continue  # a name of the package itself (``__version__``), not a module
            if source != target:
                edges.append((module, source, target, f"{path.relative_to(SRC.parent)}:{line}"))
    return edges


def test_every_package_has_a_layer() -> None:
    packages = {_package(module) for module in _modules()}
    loose = sorted(
        f"src/prism/{p.name}"
        for p in PRISM.glob("*.py")
        if p.name not in ("__init__.py", "server.py")
    )
    assert not loose, f"modules outside every package (give each its package): {loose}"
    undeclared = sorted(packages - set(_LEVEL))
    assert not undeclared, f"packages without a layer (add them to LAYERS): {undeclared}"


def test_imports_point_down_only() -> None:
    wrong = []
    for module, source, target, where in _edges():
        if target not in _LEVEL or source not in _LEVEL:
            continue  # reported by test_every_package_has_a_layer
        if (module, target) in UPWARD_ALLOWED or target == source:
            continue
        if _LEVEL[target] <= _LEVEL[source]:
            side = "above" if _LEVEL[target] < _LEVEL[source] else "beside"
            wrong.append(f"{where}: {source} imports {target}, which is {side} it")
    assert not wrong, "imports against the layers (see LAYERS):\n" + "\n".join(wrong)


def test_the_upward_allowance_holds_only_imports_that_are_still_there() -> None:
    still = {(module, target) for module, _, target, _ in _edges()}
    gone = sorted(
        f"{module} -> {target}"
        for module, target in UPWARD_ALLOWED
        if (module, target) not in still
    )
    assert not gone, f"remove from UPWARD_ALLOWED, these imports are gone: {gone}"


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for module, source, target, _ in _edges():
        if (module, target) not in UPWARD_ALLOWED:
            graph.setdefault(source, set()).add(target)
    path: list[str] = []
    state: dict[str, str] = {}

    def visit(package: str) -> list[str] | None:
        state[package] = "open"
        path.append(package)
        for nxt in sorted(graph.get(package, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[package] = "done"
        return None

    for package in sorted(graph):
        if package not in state and (cycle := visit(package)):
            raise AssertionError("packages import each other: " + " -> ".join(cycle))


def _lines() -> dict[str, int]:
    return {
        path.relative_to(PRISM).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in PRISM.rglob("*.py")
    }


def test_no_module_is_over_the_line_limit() -> None:
    too_long = sorted(
        f"src/prism/{name}: {count} lines"
        for name, count in _lines().items()
        if count > MAX_LINES and name not in EXEMPT_FROM_MAX_LINES | TOO_LONG_ALLOWED
    )
    assert not too_long, f"over {MAX_LINES} lines (split by job): {too_long}"


def test_the_line_allowance_holds_only_modules_still_too_long() -> None:
    lines = _lines()
    done = sorted(name for name in TOO_LONG_ALLOWED if lines.get(name, 0) <= MAX_LINES)
    assert not done, f"remove from TOO_LONG_ALLOWED, these are short enough now: {done}"
