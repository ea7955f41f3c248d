"""The package's layering, written down: which folder may import which, and no import circles.

Read from the source (``ast``), so it sees every import wherever it stands:
at module level, under ``TYPE_CHECKING`` or inside a function. Rules name
folders and modules by prefix (``engine`` is ``engine/__init__.py`` and
everything under ``engine/``): a module added to a folder falls under its
folder's rules without touching this file.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import django_dyrygent

PACKAGE = Path(django_dyrygent.__file__).parent

#: What the engine's callers are: the engine never imports them (it would import its own callers).
ABOVE_ENGINE = (
    "admin", "build", "worker", "graph", "management", "tasks", "api", "launch", "workflows", "canvas",
    "draft", "catalogue", "operations", "checks", "urls", "apps", "templatetags", "subworkflows", "growth",
)


@dataclass(frozen=True)
class Rule:
    """Modules under ``importer`` must not import modules under any of ``forbidden`` except ``allowed``.

    ``lazy_ok``: an import inside a function (run time only) is allowed; one
    at module level, ``TYPE_CHECKING`` included, is not.
    """

    importer: str
    forbidden: tuple[str, ...]
    allowed: tuple[str, ...] = ()
    lazy_ok: bool = False
    why: str = ""


RULES = (
    Rule("engine", ABOVE_ENGINE, why="the engine is called by these; it sends the tick by task name"),
    Rule("engine.sql", ("*",), allowed=("models", "states"),
         why="a leaf of statement text: the COPY writer (build/) may import it"),
    Rule("build", ("engine",), allowed=("engine.sql",),
         why="saving builds rows; the engine runs them. Only the statements' text is shared"),
    Rule("build", ("admin", "worker", "graph", "tasks", "api", "launch", "workflows", "catalogue", "operations")),
    Rule("models", ("engine", "build"), lazy_ok=True,
         why="the run methods (apply_async, wait, tick, cancel, ...) are the documented facade"),
    Rule("models", ("admin", "worker", "graph", "tasks", "api", "launch", "workflows", "catalogue", "operations")),
    Rule("draft", ("*",), allowed=("states",), why="the draft holds data: a leaf"),
    Rule("canvas", ("*",), allowed=("states", "draft", "serialization")),
    Rule("worker", ("admin", "build", "graph", "api", "launch")),
    Rule("graph", ("admin", "engine", "worker", "build")),
    Rule("admin.views", ("admin.workflows",), why="the change views are handed what they need"),
)

#: Edges a circle may use: a model's run method importing the engine or build lazily.
FACADE = (("models", "engine"), ("models", "build"))


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    lazy: bool  # inside a function: runs when called, not when the module is imported
    typing_only: bool  # under ``if TYPE_CHECKING:``


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _parse(source: str) -> ast.Module:
    """``ast.parse``, again on CPython's spurious "AST constructor recursion depth mismatch".

    CPython 3.11 keeps the AST converter's depth in per-interpreter state, so a parse can fail
    while a thread left by an earlier test (a worker, a server) converts an AST too (CPython
    gh-106905 and its discussion); the same source parses on the next try.
    """
    for _ in range(4):
        try:
            return ast.parse(source)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc):
                raise
    return ast.parse(source)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, root: Path, package: str) -> list[Import]:
    """Every import of a module of ``package`` in ``path``, resolved to a module name relative to ``root``."""
    name = module_name(path, root)
    is_package = path.name == "__init__.py"
    here = name.split(".") if name else []
    found: list[Import] = []

    def resolve(node: ast.ImportFrom | ast.Import) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name[len(package) + 1:] for a in node.names if a.name.startswith(package + ".")]
        if node.level == 0:
            if not (node.module or "").startswith(package):
                return []
            base = (node.module or "")[len(package) + 1:].split(".") if node.module != package else []
        else:
            base = here if is_package else here[:-1]
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            base = base + (node.module.split(".") if node.module else [])
        out = []
        for alias in node.names:
            sub = ".".join(base + [alias.name])
            if (root / Path(*sub.split("."))).with_suffix(".py").exists() or (root / Path(*sub.split("."))).is_dir():
                out.append(sub)  # ``from . import db``: the submodule
            else:
                out.append(".".join(base))
        return sorted(set(out))

    def visit(node: ast.AST, lazy: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in resolve(child):
                    found.append(Import(name, target, child.lineno, lazy, typing_only))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, typing_only)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), lazy, True)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), lazy, typing_only)
            else:
                visit(child, lazy, typing_only)

    visit(_parse(path.read_text()), False, False)
    return found


def all_imports(root: Path, package: str) -> list[Import]:
    return [
        imp for path in sorted(root.rglob("*.py")) if "migrations" not in path.parts
        for imp in imports_of(path, root, package)
    ]


def under(name: str, prefix: str) -> bool:
    return prefix == "*" or name == prefix or name.startswith(prefix + ".")


def violations(imports: list[Import], rules: tuple[Rule, ...] = RULES) -> list[str]:
    """Each import a rule forbids, as ``importer:line imports imported (why)``."""
    out = []
    for imp in imports:
        for rule in rules:
            if not under(imp.importer, rule.importer) or imp.imported == "" or under(imp.importer, imp.imported):
                continue  # ``from . import x`` in a package's own modules is the package itself
            if rule.lazy_ok and imp.lazy:
                continue
            if any(under(imp.imported, f) for f in rule.forbidden) and not any(
                under(imp.imported, a) for a in rule.allowed
            ):
                kind = "lazily " if imp.lazy else "for types " if imp.typing_only else ""
                out.append(f"{imp.importer}:{imp.line} imports {kind}{imp.imported} ({rule.why or 'layering'})")
    return out


def circles(imports: list[Import], facade: tuple[tuple[str, str], ...] = FACADE) -> list[list[str]]:
    """Import circles among modules, through any import that runs but the facade's lazy ones.

    Imports for types only never run (a QuerySet naming its model, a helper
    naming its sibling's type); a rule above forbids the ones that would
    point up a layer.
    """
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.typing_only:
            continue
        if imp.lazy and any(under(imp.importer, a) and under(imp.imported, b) for a, b in facade):
            continue
        if imp.imported and not under(imp.importer, imp.imported):
            graph.setdefault(imp.importer, set()).add(imp.imported)
    found, state = [], {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            walk(start, [start])
    return found


def test_layering__the_package_keeps_every_rule():
    assert violations(all_imports(PACKAGE, "django_dyrygent")) == []


def test_layering__no_import_circle_but_the_model_facade():
    """Lazy imports count too (they only move the circle to run time), except a model's run methods."""
    assert circles(all_imports(PACKAGE, "django_dyrygent")) == []


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_layering__an_upward_import_is_reported_wherever_it_stands(tmp_path):
    root = tmp_path / "pkg"
    write(root, {
        "__init__.py": "", "models.py": "", "states.py": "",
        "admin/__init__.py": "", "admin/views.py": "", "build/__init__.py": "", "build/save.py": "",
        "engine/__init__.py": "from . import steps\n",
        "engine/steps.py": "from ..models import X\n\ndef f():\n    from ..admin import views\n",
        "engine/sql.py": "from ..models import X\nfrom ..states import Y\n",
        "engine/db.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.build import save\n",
        "build/copywriter.py": "from ..engine import sql\nfrom ..engine import steps\n",
    })
    found = violations(all_imports(root, "pkg"))
    assert [v.split(" (")[0] for v in found] == [
        "build.copywriter:2 imports engine.steps",
        "engine.db:3 imports for types build.save",
        "engine.steps:4 imports lazily admin.views",
    ], found


def test_layering__a_lazy_import_is_allowed_only_where_a_rule_says_so(tmp_path):
    root = tmp_path / "pkg"
    write(root, {
        "__init__.py": "", "states.py": "", "engine/__init__.py": "", "build/__init__.py": "",
        "models.py": "def apply():\n    from . import engine\n    from .build import save\n",
        "build/save.py": "", "draft.py": "from . import models\n",
    })
    found = violations(all_imports(root, "pkg"))
    assert [v.split(" (")[0] for v in found] == ["draft:1 imports models"], found
    write(root, {"models.py": "from . import engine\n"})
    assert [v.split(" (")[0] for v in violations(all_imports(root, "pkg"))] == [
        "draft:1 imports models", "models:1 imports engine",
    ]


def test_layering__a_circle_is_reported_unless_it_goes_through_the_facade(tmp_path):
    root = tmp_path / "pkg"
    write(root, {
        "__init__.py": "", "engine/__init__.py": "from ..models import Workflow\n",
        "models.py": "def tick():\n    from . import engine\n",
        "a.py": "from . import b\n", "b.py": "def f():\n    from . import a\n",
        "c.py": "from . import d\n",
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\n",
    })
    assert circles(all_imports(root, "pkg")) == [["a", "b", "a"]]
