"""The house rules, enforced: who may import whom (docs/architecture.md), and no import cycles.

Every module of our packages is read as text (ast); nothing is imported, so a rule broken inside
a function (a lazy import) is caught as well as one at the top.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("gwcore", "appliance", "gateway", "firstboot", "mgmtplane")

# Which packages each package may import (besides itself). The core imports nothing of ours; the
# build system, first boot and the plane only the core; nothing imports the build system or the plane.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "gwcore": frozenset(),
    "appliance": frozenset({"gwcore"}),
    "gateway": frozenset({"gwcore"}),
    "firstboot": frozenset({"gwcore"}),
    "mgmtplane": frozenset({"gwcore"}),
}

# The gateway's rooms: what each may import of the others (the daemon, at gateway's top, wires
# them together and may import any). The filter is pure and knows nothing of tunnels or targets.
ROOMS: dict[str, frozenset[str]] = {
    "gateway.filter": frozenset(),
    "gateway.tunnel": frozenset(),
    "gateway.relay": frozenset({"gateway.filter"}),
    "gateway.identity": frozenset(),
    # The operate lane probes targets under the relay's rules, reads the filter's counts and
    # policies, and watches the tunnel.
    "gateway.health": frozenset({"gateway.filter", "gateway.relay", "gateway.tunnel"}),
    # The update lane downloads as the tunnel dials (its proxy settings, backoff, TLS context).
    "gateway.update": frozenset({"gateway.tunnel"}),
}
# Modules of a room every other room may use: the package's error base.
SHARED_IN_GATEWAY = frozenset({"gateway.errors"})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            out[_module_name(path)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return name in MODULES and MODULES[name].name == "__init__.py"


def _imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """(module imported, line) for every import of ours in a module, top level or inside functions."""
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                # `from pkg import submodule` imports the submodule; `from mod import name` the module.
                yield (sub if sub in MODULES else module), node.lineno


def _public(package: str) -> set[str]:
    """The modules a package declares public in its __init__'s __all__."""
    init = MODULES.get(package)
    if init is None or init.name != "__init__.py":
        return set()
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            return {f"{package}.{ast.literal_eval(elt)}" for elt in node.value.elts}  # type: ignore[attr-defined]
    return set()


def _room(module: str) -> str | None:
    for room in ROOMS:
        if module == room or module.startswith(room + "."):
            return room
    return None


def _violations() -> list[str]:
    problems: list[str] = []
    for name, path in MODULES.items():
        own = name.split(".")[0]
        for target, line in _imports(name, path):
            where = f"{path.relative_to(REPO)}:{line}: {target}"
            other = target.split(".")[0]
            if other != own:
                if other not in MAY_IMPORT[own]:
                    problems.append(f"{where}: {own} may not import {other}")
                elif target != other and target not in _public(other) and target not in MODULES:
                    problems.append(f"{where}: not a module of {other}")
                continue
            if own != "gateway":
                continue
            mine, theirs = _room(name), _room(target)
            if theirs is None or theirs == mine or target in SHARED_IN_GATEWAY:
                continue
            if mine is not None and theirs not in ROOMS[mine]:
                problems.append(f"{where}: {mine} may not import {theirs}")
            elif target != theirs and target not in _public(theirs):
                problems.append(f"{where}: not in {theirs}'s public surface {sorted(_public(theirs))}")
    return problems


def test_each_package_imports_only_what_the_house_rules_allow() -> None:
    assert _violations() == []


def test_the_rules_see_a_breach() -> None:
    """The checker itself: a plane module importing the gateway, or a room importing a sibling's
    internals, is reported (a rule that cannot fail would prove nothing)."""
    tree = ast.parse("from gateway.relay.relay import Relay\nimport gateway.filter.jsonpath\n")
    found = [
        node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]
    assert found == ["gateway.relay.relay", "gateway.filter.jsonpath"]
    assert "gateway" not in MAY_IMPORT["mgmtplane"]
    assert "gateway.filter.jsonpath" not in _public("gateway.filter")
    assert "gateway.filter.metadata_filter" in _public("gateway.filter")


def test_every_module_is_seen() -> None:
    assert {"gwcore.enrol", "gateway.relay.relay", "firstboot.register.client", "mgmtplane.hub"} <= set(
        MODULES
    )


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        graph[name] = {t for t, _ in _imports(name, path) if t in MODULES and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
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
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_import_cycles_not_even_through_imports_inside_functions() -> None:
    graph = _graph()
    # A package's __init__ importing its own submodules is how a package declares itself; an edge
    # back from a submodule to its package's __init__ is then not a cycle of logic.
    for name in graph:
        graph[name] = {t for t in graph[name] if not (_is_package(t) and name.startswith(t + "."))}
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


@pytest.mark.timeout(60)
def test_the_plane_loads_no_gateway_filter_or_http_client_code() -> None:
    """In a fresh interpreter: the plane's app, CLI and hub load only the core of ours."""
    code = (
        "import json, sys\n"
        "import mgmtplane.app, mgmtplane.cli, mgmtplane.hub, mgmtplane.forward\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert "mgmtplane.hub" in loaded and "gwcore.streams" in loaded
    ours = sorted(m for m in loaded if m.split(".")[0] in ("gateway", "firstboot", "appliance"))
    assert ours == []
    # The filter's parsers and the relay's HTTP client.
    assert sorted(m for m in loaded if m.split(".")[0] in ("yaml", "h11", "defusedxml")) == []


@pytest.mark.timeout(60)
def test_the_gateway_daemon_loads_no_heavy_rarely_used_module() -> None:
    """In a fresh interpreter, what `gateway run` imports before it serves: no `cryptography`
    (7-8 MiB resident, needed only to renew the certificate or take a ca-update: gateway.identity
    imports it there), and none of the modules only other commands use (docs/relay-performance.md
    "Memory": peak RSS of the relay benchmark)."""
    code = (
        "import json, sys\n"
        "from gateway.cli import build_parser\n"
        "build_parser()\n"
        "import gateway.daemon\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert "gateway.daemon" in loaded and "gateway.identity.manager" in loaded
    heavy = ("cryptography", "bcrypt", "gateway.identity.trust", "gwcore.pki", "jinja2", "urwid", "trustme")
    assert sorted(m for m in loaded if m.startswith(heavy)) == []
