"""service/inspect is model-side except its router and schemas: the inspection math imports no fastapi,
starlette or service.errors (it raises its own exceptions; service/errors.py maps them)."""

from __future__ import annotations

import ast
from pathlib import Path

INSPECT = Path(__file__).resolve().parents[2] / "service" / "inspect"
HTTP = ("fastapi", "starlette", "service.errors")


def imported(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_the_inspection_math_imports_no_http() -> None:
    model_side = [p for p in sorted(INSPECT.glob("*.py")) if p.name not in ("router.py", "schemas.py")]
    assert {"forward.py", "logit_lens.py"} <= {p.name for p in model_side}
    found = [
        f"{p.name} imports {n}"
        for p in model_side
        for n in imported(p)
        if any(n == h or n.startswith(h + ".") for h in HTTP)
    ]
    assert not found, found


def test_the_router_does_import_http() -> None:
    """The check above sees imports at all: the router's are found."""
    assert "fastapi" in imported(INSPECT / "router.py")
