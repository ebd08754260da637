"""Keep the protocol and core layers free of I/O: no event loop, sockets, logging or stores.

The walk reads every module with ``ast`` instead of importing it, so a forbidden import
is found even inside a function, under ``if TYPE_CHECKING`` or in a module that no test
imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "lobbyd"
PURE_LAYERS = ("protocol", "core")
FORBIDDEN = ("asyncio", "socket", "selectors", "uvloop", "structlog", "lobbyd.server", "lobbyd.store")


def module_name(path: Path) -> str:
    """Return the dotted module name of ``path``, a file under the package root."""
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_names(tree: ast.AST, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Return (line, dotted name) for every import in ``tree``, relative ones resolved.

    ``from a import b`` yields both ``a`` and ``a.b``, because ``b`` may be a submodule.
    Calls of ``importlib.import_module`` and ``__import__`` with a literal name count too.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve_relative(package, node.module, node.level)
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and is_dynamic_import(node):
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                found.append((node.lineno, argument.value))
    return found


def resolve_relative(package: str, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, module] if module else base)


def is_dynamic_import(call: ast.Call) -> bool:
    function = call.func
    if isinstance(function, ast.Name):
        named = function.id in ("__import__", "import_module")
    elif isinstance(function, ast.Attribute):
        named = function.attr == "import_module"
    else:
        named = False
    return named and bool(call.args)


def is_forbidden(name: str) -> bool:
    return any(name == banned or name.startswith(f"{banned}.") for banned in FORBIDDEN)


def breaches(path: Path) -> list[str]:
    """Return one line per forbidden import in ``path``: file, line number and module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    relative = path.relative_to(PACKAGE_ROOT.parent)
    return [
        f"{relative}:{line} imports {name}"
        for line, name in imported_names(tree, module_name(path), is_package)
        if is_forbidden(name)
    ]


def pure_modules() -> list[Path]:
    return sorted(path for layer in PURE_LAYERS for path in (PACKAGE_ROOT / layer).rglob("*.py"))


def test_pure_layers_have_modules() -> None:
    names = {module_name(path) for path in pure_modules()}

    assert "lobbyd.core.lobby" in names
    assert "lobbyd.protocol.messages" in names


@pytest.mark.parametrize("path", pure_modules(), ids=lambda path: module_name(path))
def test_module_imports_no_io(path: Path) -> None:
    assert breaches(path) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio", "asyncio"),
        ("import asyncio.streams", "asyncio.streams"),
        ("from socket import socket", "socket"),
        ("import selectors as sel", "selectors"),
        ("def f():\n    import uvloop", "uvloop"),
        ("from structlog import get_logger", "structlog"),
        ("from lobbyd import server", "lobbyd.server"),
        ("from lobbyd.store.memory import MemoryStore", "lobbyd.store.memory"),
        ("from ..server import session", "lobbyd.server"),
        ("from .. import store", "lobbyd.store"),
        ("import importlib\nimportlib.import_module('asyncio')", "asyncio"),
        ("__import__('socket')", "socket"),
    ],
)
def test_walker_finds_breach(source: str, expected: str) -> None:
    names = [name for _, name in imported_names(ast.parse(source), "lobbyd.core.example")]

    assert expected in names
    assert any(is_forbidden(name) for name in names)


@pytest.mark.parametrize(
    "source",
    [
        "import msgspec",
        "from lobbyd.core.model import Ticket",
        "from lobbyd.errors import RemoteError",
        "from . import model",
        "import socketserver_lookalike",
        "from lobbyd.storefront import shelf",
    ],
)
def test_walker_allows_pure_import(source: str) -> None:
    names = [name for _, name in imported_names(ast.parse(source), "lobbyd.core.example")]

    assert not any(is_forbidden(name) for name in names)
