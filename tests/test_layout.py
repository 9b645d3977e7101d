"""The tree reads top-down: nothing imports what is above it, no import circle, one package."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "loginprobe"

# Lower layers first; a module may import its own layer's kernel and any layer below.
LAYERS = [
    ("kernel", ["loginprobe", "loginprobe.address", "loginprobe.config", "loginprobe.codec",
                "loginprobe.contract", "loginprobe.render", "loginprobe.result",
                "loginprobe.target", "loginprobe.wire"]),
    ("probes", ["loginprobe.probes"]),
    ("agent", ["loginprobe.agent"]),
    ("collector", ["loginprobe.collector"]),
    ("compare", ["loginprobe.compare"]),
    ("cli", ["loginprobe.cli"]),
]
# What each layer may import besides itself.
ALLOWED = {
    "kernel": {"kernel"},
    "probes": {"kernel"},
    "agent": {"kernel", "probes"},
    "collector": {"kernel"},
    "compare": {"kernel"},
    "cli": {"kernel", "probes", "agent", "collector", "compare"},
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    best, length = "", -1
    for name, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > length:
                best, length = name, len(p)
    assert best, module
    return best


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "wire" in path.relative_to(PACKAGE).parts:
            continue
        module, found = _module(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[module] = found
    return graph


def test_nothing_below_imports_what_is_above() -> None:
    wrong = []
    for module, imported in _imports().items():
        for name in imported:
            if name.split(".")[0] in {"tests", "devstack", "bench", "agent", "collector"}:
                wrong.append(f"{module} imports {name}")
            if not name.startswith("loginprobe"):
                continue
            mine, theirs = _layer(module), _layer(name)
            if theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{module} ({mine}) imports {name} ({theirs})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle() -> None:
    graph = _imports()
    modules = set(graph)
    edges = {m: {n for n in imported if n in modules and n != m} for m, imported in graph.items()}
    # A package's __init__ runs before any of its modules: importing loginprobe.x.y imports
    # loginprobe.x first, so that edge counts too.
    for m in modules:
        parent = m.rpartition(".")[0]
        if parent in modules and parent != m:
            edges[m].add(parent)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join([*stack[stack.index(n):], n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m)


def test_one_import_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["loginprobe*"]
    assert not (ROOT / "agent").exists() and not (ROOT / "collector").exists()


def test_wire_types_stop_at_the_edge() -> None:
    # The gRPC ends (the agent's uplink, the collector's server and ingest) and the codec
    # between wire and plain types; the exporters read ResultViews, never the messages.
    edge = {"loginprobe.codec", "loginprobe.agent.uplink", "loginprobe.collector.server",
            "loginprobe.collector.ingest"}
    users = {m for m, imported in _imports().items()
             if any(n == "loginprobe.wire" or n.startswith("loginprobe.wire.") for n in imported)}
    assert users <= edge, sorted(users - edge)
