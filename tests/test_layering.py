"""The layout shows the architecture: a module of weaksync imports only from its own package or a layer
below it, checked from the imports themselves (function-level ones included), so no cycle can creep in."""

from __future__ import annotations

import ast
from pathlib import Path

import weaksync

ROOT = Path(weaksync.__file__).parent
LAYERS = [  # bottom first; packages on one line may not import each other
    ["errors"],
    ["core", "transport", "records"],
    ["stragglers"],
    ["config"],
    ["training"],
    ["report"],
    ["runtime", "sim"],
    ["testbed"],
    ["bench"],
    ["cli"],
    ["api"],
    ["__init__", "__main__"],
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def package_of(path: Path) -> str:
    """The first component under weaksync/ ('core' for core/server.py, 'config' for config.py)."""
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def imported_packages(path: Path, source: str | None = None) -> set[str]:
    """weaksync packages the file at `path` (or `source`, as if it stood there) imports, from relative and
    absolute imports."""
    module_parts = list(path.relative_to(ROOT).with_suffix("").parts)
    out = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = module_parts[: len(module_parts) - node.level]
            parts = base + (node.module.split(".") if node.module else [])
            if parts:
                out.add(parts[0])
            else:  # `from .. import x` at the top: x is the package
                out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "weaksync":
            parts = node.module.split(".")
            out.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "weaksync" and len(parts) > 1:
                    out.add(parts[1])
    return out


def test_every_package_has_a_layer():
    packages = {package_of(p) for p in ROOT.rglob("*.py")}
    assert packages <= set(LAYER_OF), f"give these a layer in LAYERS: {sorted(packages - set(LAYER_OF))}"


def test_no_module_imports_from_a_layer_above_or_beside_it():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        own = package_of(path)
        for target in imported_packages(path) - {own}:
            if target not in LAYER_OF:
                continue  # a plain module name such as `from . import x` inside a package
            if LAYER_OF[target] >= LAYER_OF[own]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, "imports against the layering: " + "; ".join(wrong)


def test_the_checker_sees_upward_imports():
    """The check is not vacuous: the import forms a core module could use to reach runtime are all found."""
    here = ROOT / "core" / "policy.py"
    for source in (
        "from ..runtime.launcher import run_local\n",
        "def f():\n    from ..runtime import launcher\n",
        "import weaksync.runtime.launcher\n",
        "from weaksync.runtime import launcher\n",
    ):
        assert "runtime" in imported_packages(here, source), source
    assert imported_packages(here, "from .actions import Send\n") == {"core"}
