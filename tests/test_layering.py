"""
The package's modules import downwards only, so that its folders read as layers: the model
does not know the trainer, and nothing below the engine knows it (docs/design.md).
"""

import ast

from tests.helpers import REPO

PACKAGE = REPO / "projects" / "cascade"
# Lowest first; a module may import from its own layer and the ones before it.
LAYERS = [
    ("errors", "utils"),
    ("config", "run_settings"),
    ("layers",),
    ("modeling",),
    ("data",),
    ("evaluation",),
    ("export",),
    ("engine",),
    ("config_loader", "demo"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _part(module_path):
    """The top-level part of the package that a module (dotted, inside it) belongs to."""
    return module_path.split(".")[0]


def _imports(path):
    """The package parts that the module at `path` imports."""
    inside = path.relative_to(PACKAGE).with_suffix("").parts
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package
                base = list(inside[: len(inside) - node.level])
                target = ".".join(base + ([node.module] if node.module else []))
                if target:
                    yield _part(target)
                else:  # "from . import x" at the top level
                    yield from (_part(alias.name) for alias in node.names)
            elif node.module and node.module.startswith("projects.cascade."):
                yield _part(node.module[len("projects.cascade.") :])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("projects.cascade."):
                    yield _part(alias.name[len("projects.cascade.") :])


def test_every_part_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    parts -= {"__init__", "__pycache__"}
    assert parts == set(RANK)


def test_no_import_points_up():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _part(".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        if own == "__init__":
            continue
        for imported in _imports(path):
            if imported in RANK and RANK[imported] > RANK[own]:
                upward.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not upward, upward
