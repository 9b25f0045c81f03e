"""Every public function, class and method of rlprune documents itself and its parameters.

The API reference (``make docs``) is generated from the docstrings, so a missing one is
a hole in it. Public means: named in the module's ``__all__`` (or, without one, not
starting with ``_``), and for a public class every method and property whose name does
not start with ``_``. A parameter counts as documented when its name appears as a word
in the docstring (a class's ``__init__`` parameters in the class or ``__init__``
docstring); a dataclass field when the class docstring names it, a string follows it
(an attribute docstring) or a comment documents it (``#:`` on the line above, or after
it on its line). Read from the source, nothing is imported.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "rlprune"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _assigned(tree: ast.Module, name: str) -> ast.expr | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
    return None


def _public_names(tree: ast.Module) -> set[str] | None:
    """The names of ``__all__``: strings, and ``*TABLE`` for a dict's keys (lazy exports)."""
    value = _assigned(tree, "__all__")
    if not isinstance(value, ast.List | ast.Tuple):
        return None
    names: set[str] = set()
    for elt in value.elts:
        if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
            names.add(elt.value)
        elif isinstance(elt, ast.Starred) and isinstance(elt.value, ast.Name):
            table = _assigned(tree, elt.value.id)
            if isinstance(table, ast.Dict):
                names |= {k.value for k in table.keys if isinstance(k, ast.Constant)}
    return names


def _params(fn: Function, method: bool) -> list[str]:
    a = fn.args
    names = [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
    names += [p.arg for p in (a.vararg, a.kwarg) if p is not None]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    return names[1:] if method and not static and names else names


def _mentions(doc: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}\b", doc) is not None


def _is_dataclass(cls: ast.ClassDef) -> bool:
    return any((isinstance(d, ast.Name) and d.id == "dataclass")
               or (isinstance(d, ast.Call) and getattr(d.func, "id", "") == "dataclass")
               for d in cls.decorator_list)


def _gaps(path: Path) -> Iterator[str]:
    """One line per undocumented object or parameter of the module at ``path``."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    public = _public_names(tree)
    where = path.relative_to(PACKAGE.parent).as_posix()

    def is_public(name: str) -> bool:
        return name in public if public is not None else not name.startswith("_")

    def check(fn: Function, qual: str, method: bool, extra_doc: str = "") -> Iterator[str]:
        doc = (ast.get_docstring(fn) or "") + "\n" + extra_doc
        if not doc.strip():
            yield f"{where}: {qual} has no docstring"
            return
        missing = [p for p in _params(fn, method) if not _mentions(doc, p)]
        if missing:
            yield f"{where}: {qual} does not document {', '.join(missing)}"

    for node in tree.body:
        if isinstance(node, Function) and is_public(node.name):
            yield from check(node, node.name, method=False)
        elif isinstance(node, ast.ClassDef) and is_public(node.name):
            cdoc = ast.get_docstring(node) or ""
            if not cdoc:
                yield f"{where}: class {node.name} has no docstring"
            for i, item in enumerate(node.body):
                if isinstance(item, Function) and item.name == "__init__":
                    yield from check(item, f"{node.name}()", method=True, extra_doc=cdoc)
                elif isinstance(item, Function) and not item.name.startswith("_"):
                    yield from check(item, f"{node.name}.{item.name}", method=True)
                elif (_is_dataclass(node) and isinstance(item, ast.AnnAssign)
                      and isinstance(item.target, ast.Name)
                      and "ClassVar" not in ast.unparse(item.annotation)):
                    name = item.target.id
                    above = lines[item.lineno - 2].strip() if item.lineno > 1 else ""
                    trailing = "#" in lines[item.end_lineno - 1 if item.end_lineno else
                                             item.lineno - 1]
                    after = node.body[i + 1] if i + 1 < len(node.body) else None
                    has_doc = (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                               and isinstance(after.value.value, str))
                    if not (_mentions(cdoc, name) or has_doc or above.startswith("#:")
                            or trailing):
                        yield f"{where}: field {node.name}.{name} is not documented"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_public_api_is_documented(path: Path) -> None:
    gaps = list(_gaps(path))
    assert not gaps, "\n".join(gaps)


def test_modules_are_found() -> None:
    assert len(MODULES) > 20 and PACKAGE / "api.py" in MODULES
