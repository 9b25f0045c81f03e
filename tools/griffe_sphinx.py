"""A griffe extension that reads rlprune's Sphinx-style docstrings for mkdocstrings.

rlprune documents in the Sphinx manner: cross-references are roles
(``:func:`prune```, ``:class:`~rlprune.costs.BoundBudget```) and module constants and
attributes are documented by a ``#:`` comment above them. Markdown knows neither, so
before mkdocstrings renders anything this extension

* gives an attribute without a docstring the text of the ``#:`` comment lines right
  above it, and
* turns each role into an autorefs link to the object it names, resolved the way
  Python resolves a name in the docstring's scope (the object, its class, its module
  and that module's imports), taking the first object of the role's kind.

A role that names nothing is a warning, which ``mkdocs build --strict`` turns into a
failed build, so a renamed function cannot leave a dangling reference behind. Names
outside the reference (private objects, other libraries) are shown as code without a
link. A build tool named in ``mkdocs.yml``, not part of the rlprune package.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import partial
from typing import Any

import griffe

__all__ = ["SphinxStyle"]

#: ``:role:`target``` or ``:role:`~target```, as rlprune's docstrings write them.
ROLE = re.compile(r":(func|class|meth|attr|data|mod|exc|obj):`(~?)([\w.]+)`")

#: The kinds of object each role may name.
ROLE_KINDS = {
    "func": {griffe.Kind.FUNCTION},
    "meth": {griffe.Kind.FUNCTION},
    "class": {griffe.Kind.CLASS},
    "exc": {griffe.Kind.CLASS},
    "attr": {griffe.Kind.ATTRIBUTE},
    "data": {griffe.Kind.ATTRIBUTE},
    "mod": {griffe.Kind.MODULE},
    "obj": set(griffe.Kind),
}


def _objects(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every object defined under it (imported names are skipped)."""
    yield obj
    for member in obj.members.values():
        if isinstance(member, griffe.Object):
            yield from _objects(member)


def _target(member: griffe.Object | griffe.Alias) -> griffe.Object | None:
    """``member`` itself, or the object an imported name stands for if griffe loaded it."""
    if isinstance(member, griffe.Object):
        return member
    try:
        final = member.final_target
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return final if isinstance(final, griffe.Object) else None


class SphinxStyle(griffe.Extension):
    """``#:`` attribute comments become docstrings, Sphinx roles become autorefs links."""

    def on_attribute_instance(self, *, node: ast.AST | griffe.ObjectNode,
                              attr: griffe.Attribute, agent: Any, **kwargs: Any) -> None:
        """Give ``attr`` the ``#:`` comment above it as its docstring, if it has none.

        ``node`` is the assignment griffe visited and ``agent`` the visitor (unused).
        """
        if attr.docstring is not None or attr.lineno is None:
            return
        lines = attr.module.lines
        i = attr.lineno - 2  # the line above the assignment, 0-based
        comment: list[str] = []
        while i >= 0 and lines[i].lstrip().startswith("#:"):
            comment.insert(0, lines[i].lstrip()[2:].strip())
            i -= 1
        if comment:
            attr.docstring = griffe.Docstring("\n".join(comment), lineno=i + 2,
                                              endlineno=attr.lineno - 1, parent=attr)

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader,
                   **kwargs: Any) -> None:
        """Rewrite the roles of every docstring of ``pkg`` once it is loaded whole.

        ``pkg`` is the package griffe just loaded and ``loader`` the loader that
        loaded it (unused: names are resolved within ``pkg``).
        """
        self._pkg = pkg
        self._lazy = self._lazy_names(pkg)
        self._by_name: dict[str, list[griffe.Object]] = {}
        for obj in _objects(pkg):
            self._by_name.setdefault(obj.name, []).append(obj)
        for obj in _objects(pkg):
            if obj.docstring is not None and ":`" in obj.docstring.value:
                obj.docstring.value = ROLE.sub(partial(self._link, obj), obj.docstring.value)

    @staticmethod
    def _lazy_names(pkg: griffe.Module) -> dict[str, str]:
        """``{exported path: defining path}`` of the names a package exports lazily.

        ``rlprune/__init__.py`` maps ``prune``, ``Budget`` and the others to their
        modules in ``_LAZY``, read by its ``__getattr__``; static analysis cannot
        follow that, so the table is read here.
        """
        lazy = pkg.members.get("_LAZY")
        if not isinstance(lazy, griffe.Attribute) or lazy.value is None:
            return {}
        table = ast.literal_eval(str(lazy.value))
        return {f"{pkg.name}.{name}": f"{mod}.{attr}" for name, (mod, attr) in table.items()}

    def _at(self, path: str) -> griffe.Object | None:
        """The object at the dotted ``path`` inside the package, imports followed."""
        path = self._lazy.get(path, path)
        head, _, rest = path.partition(".")
        if head != self._pkg.name:
            return None
        if not rest:
            return self._pkg
        try:
            member = self._pkg[rest]
        except (KeyError, ValueError, griffe.AliasResolutionError):
            return None
        return _target(member) if isinstance(member, griffe.Object | griffe.Alias) else None

    def _in_scope(self, scope: griffe.Object, head: str,
                  kinds: set[griffe.Kind]) -> griffe.Object | str | None:
        """What ``head`` names from ``scope``: the first object of one of ``kinds``
        found in the scope or an enclosing one, or the dotted path of an object of
        another library, or ``None``."""
        current: griffe.Object | None = scope
        fallback: griffe.Object | str | None = None
        while current is not None:
            member = current.members.get(head)
            if member is not None:
                target = _target(member)
                if target is None and isinstance(member, griffe.Alias):
                    path = member.target_path  # an import griffe did not resolve
                    if path.partition(".")[0] != self._pkg.name:
                        return path  # another library's name
                    target = self._at(path)
                if target is not None and target.kind in kinds:
                    return target
                fallback = fallback or target
            current = current.parent
        unique = [o for o in self._by_name.get(head, []) if o.kind in kinds]
        if len(unique) == 1:  # used without an import, e.g. inside a function
            return unique[0]
        return fallback

    def _link(self, scope: griffe.Object, match: re.Match[str]) -> str:
        """The Markdown for one role found in the docstring of ``scope``."""
        role, short, name = match.group(1), match.group(2) == "~", match.group(3)
        text = f"`{name.rsplit('.', 1)[-1] if short else name}`"
        head, _, rest = name.partition(".")
        found: griffe.Object | str | None
        if head == self._pkg.name:
            found = self._at(name)
        else:
            kinds = ROLE_KINDS[role] if not rest else set(griffe.Kind)
            found = self._in_scope(scope, head, kinds)
            if isinstance(found, griffe.Object) and rest:
                found = self._at(f"{found.path}.{rest}")
        if isinstance(found, str):
            return text  # an object of another library: no page here to link to
        if found is None:
            griffe.logger.warning("%s: the docstring refers to %r, which names nothing in %s",
                                  scope.path, name, self._pkg.name)
            return text
        chain: list[griffe.Object] = []
        obj: griffe.Object | None = found
        while obj is not None and obj is not self._pkg:
            chain.append(obj)
            obj = obj.parent
        if not all(o.is_public for o in chain):
            return text  # private: documented in the source, not in the reference
        return f"[{text}][{found.path}]"
