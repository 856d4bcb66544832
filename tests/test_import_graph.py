"""The runtime's import rules (docs/architecture.md), checked over the source itself.

* No package cycles: the graph whose nodes are ``fl_kubeflow``'s subpackages (and its
  top-level modules) has no cycle. Every import counts, at module level or inside a
  function: a lazy import only hides a loop until the function runs.
* Client code never reaches server code: nothing under ``client/`` imports, directly or
  through anything it imports, ``server/``, ``strategies/`` or the server-side parts of
  ``privacy/``. Checked statically (the AST, every import) and dynamically (a fresh
  interpreter imports what a client pod imports and lists ``sys.modules``).
* The secure-aggregation package is what both ends share: nothing under ``secagg/``
  imports, directly or not, ``server/`` or ``client/`` (nor ``strategies/``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
ROOT = "fl_kubeflow"

# Server-side code a client process must never load. ``privacy`` itself and
# ``privacy.clipping`` hold what both sides share (the clipping math and its config key).
FORBIDDEN_FOR_CLIENTS = (f"{ROOT}.server", f"{ROOT}.strategies", f"{ROOT}.privacy.accountant")
# What a client pod imports: the client package, the client CLIs and the client task.
CLIENT_ENTRY_POINTS = (
    f"{ROOT}.cli.client_cmd",
    f"{ROOT}.cli.adversarial_cmd",
    f"{ROOT}.tasks.client_task",
)


def _modules() -> dict[str, Path]:
    """Every module of the runtime by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imported(name: str, path: Path) -> Iterator[str]:
    """The runtime modules ``name`` imports anywhere in its body (functions included)."""
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one.
            targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in MODULES:
                yield target
                # Importing a.b.c runs the __init__ of every package above it.
                parent = target.rpartition(".")[0]
                while parent.startswith(ROOT) and parent != ROOT:
                    yield parent
                    parent = parent.rpartition(".")[0]


IMPORTS: dict[str, set[str]] = {
    name: set(_imported(name, path)) - {name} for name, path in MODULES.items()
}


def _node(module: str) -> str:
    """The graph node a module belongs to: its first-level subpackage, or itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _package_cycles() -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    edges: dict[str, set[str]] = {}
    for module, targets in IMPORTS.items():
        if module == ROOT:
            continue
        source = _node(module)
        edges.setdefault(source, set())
        edges[source] |= {_node(t) for t in targets if t != ROOT and _node(t) != source}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN_FOR_CLIENTS)


def _reached_from(start: str) -> dict[str, str]:
    """Every module ``start`` loads, directly or not, each with the module that imports it."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        module = todo.pop()
        for target in sorted(IMPORTS[module]):
            if target not in seen and target != start:
                seen[target] = module
                todo.append(target)
    return seen


def _chain(start: str, end: str, parents: dict[str, str]) -> str:
    chain = [end]
    while chain[-1] != start:
        chain.append(parents[chain[-1]])
    return " -> ".join(reversed(chain))


def test_the_scan_sees_function_level_imports() -> None:
    # The scan itself: a function-level import counts (the CLI loads the server lazily).
    assert f"{ROOT}.server.serve" in IMPORTS[f"{ROOT}.cli.server_cmd"]
    assert f"{ROOT}.server" in IMPORTS[f"{ROOT}.cli.server_cmd"]
    assert _node(f"{ROOT}.strategies.fedavg") == f"{ROOT}.strategies"
    assert _node(f"{ROOT}.wire") == f"{ROOT}.wire"


def test_no_package_cycles() -> None:
    assert _package_cycles() == []


CLIENT_MODULES = [m for m in MODULES if m == f"{ROOT}.client" or m.startswith(f"{ROOT}.client.")]


def test_client_code_never_imports_server_code_statically() -> None:
    # Every import counts, lazy ones too. The CLI and task entry points are left to the
    # dynamic test below: their lazy imports include the server commands'.
    offenders = []
    for start in CLIENT_MODULES:
        parents = _reached_from(start)
        offenders += [_chain(start, m, parents) for m in sorted(parents) if _forbidden(m)]
    assert offenders == []


def test_client_process_never_loads_server_code() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {[*CLIENT_MODULES, *CLIENT_ENTRY_POINTS]!r}:\n"
        "    importlib.import_module(name)\n"
        "import fl_kubeflow.cli\n"
        "fl_kubeflow.cli.build_parser()\n"
        f"forbidden = {FORBIDDEN_FOR_CLIENTS!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules\n"
        "    if any(m == f or m.startswith(f + '.') for f in forbidden))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# Only these import PyTorch; the server side never reaches them (the server stays framework-free).
TORCH_IMPORTERS = {f"{ROOT}.training.torch_trainer", f"{ROOT}.training.torch_models"}
SERVER_SIDE = [m for m in MODULES if _forbidden(m)]


def _imports_torch(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        if any(name == "torch" or name.startswith("torch.") for name in names):
            return True
    return False


def test_only_the_torch_trainer_imports_torch_and_the_server_never_reaches_it() -> None:
    assert {m for m, path in MODULES.items() if _imports_torch(path)} == TORCH_IMPORTERS
    offenders = []
    for start in SERVER_SIDE:
        parents = _reached_from(start)
        offenders += [_chain(start, m, parents) for m in sorted(parents) if m in TORCH_IMPORTERS]
    assert SERVER_SIDE and offenders == []


SHARED_BY_BOTH_ENDS = f"{ROOT}.secagg"
NEITHER_END = (f"{ROOT}.server", f"{ROOT}.client", f"{ROOT}.strategies")


def test_secagg_imports_neither_the_server_nor_the_client() -> None:
    starts = [
        m for m in MODULES if m == SHARED_BY_BOTH_ENDS or m.startswith(SHARED_BY_BOTH_ENDS + ".")
    ]
    offenders = []
    for start in starts:
        parents = _reached_from(start)
        offenders += [
            _chain(start, m, parents)
            for m in sorted(parents)
            if any(m == end or m.startswith(end + ".") for end in NEITHER_END)
        ]
    assert len(starts) > 1 and offenders == []
