"""The package's import graph has no cycles, and no module imports another module's underscore names: each module
builds only on what sits below it, through public names."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "innerpissa"


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under innerpissa/ (a package is its __init__)."""
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = ("innerpissa",) + f.relative_to(PKG).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imports(name: str, file: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import in `file`, at any depth, relative ones resolved."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                out.append((sub, []) if sub in modules else (target, [a.name]))
    return [(m, names) for m, names in out if m in modules]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {t for t, _ in _imports(m, f, modules)} - {m} for m, f in modules.items()}


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":  # a back edge: t is on the current path
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_cross_modules():
    modules = _modules()
    crossing = [f"{m} imports {name} from {t}" for m, f in modules.items() for t, names in _imports(m, f, modules)
                for name in names if name.startswith("_") and not name.startswith("__")]
    assert not crossing, "underscore names imported from another module:\n" + "\n".join(crossing)
