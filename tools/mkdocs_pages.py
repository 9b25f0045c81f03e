"""mkdocs hooks that add rlprune's generated pages to the documentation site.

The user guide is the repository's ``README.md`` and the changelog its
``CHANGELOG.md``: both stay at the root, where a repository browser and the package
index show them, and the site takes them from there rather than keeping copies. Links
in the README that point into ``docs/`` are rewritten to the site's layout; any other
relative link (to a file that is not a page) stays as written and fails the strict
build. The API reference has one page per public module of ``src/rlprune``,
generated here, so a new module is documented, and listed under "API reference" in the
navigation, without editing ``mkdocs.yml``.

Named in ``mkdocs.yml`` under ``hooks``; a build tool, not part of the package.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "rlprune"
#: The navigation entry whose pages are the generated API reference.
API_SECTION = "API reference"

#: Pages taken from the repository root: ``{page in the site: file}``.
ROOT_PAGES = {"index.md": ROOT / "README.md", "changelog.md": ROOT / "CHANGELOG.md"}

# a Markdown link or image target that starts with docs/ (relative to the root)
_DOCS_LINK = re.compile(r"(\]\()docs/")


def public_modules() -> list[str]:
    """Dotted names of the package's modules, skipping private ones (``_name``)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if not any(p.startswith("_") for p in parts):
            names.append(".".join(parts))
    return sorted(names, key=lambda n: (n.count("."), n))


def api_page(module: str) -> str:
    """The ``src_uri`` of ``module``'s API page."""
    return f"api/{module}.md"


def lazy_exports() -> dict[str, str]:
    """``{name: defining path}`` of what ``import rlprune`` exports lazily (``_LAZY``).

    Static analysis cannot follow the package's ``__getattr__``, so the package page
    lists these names itself, each linked to where it is documented.
    """
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "_LAZY"):
            table = ast.literal_eval(node.value)
            return {name: f"{mod}.{attr}" for name, (mod, attr) in table.items()}
    return {}


def module_page(module: str) -> str:
    """The Markdown of ``module``'s API page: a mkdocstrings directive (and, for the
    package itself, the table of its lazy exports)."""
    body = f"# `{module}`\n\n::: {module}\n"
    if module == PACKAGE.name:
        rows = [f"| [`rlprune.{name}`][{path}] | `{path}` |"
                for name, path in lazy_exports().items()]
        body += ("\n## Exported names\n\n`import rlprune` makes these available (imported "
                 "on first use):\n\n| name | defined as |\n|---|---|\n"
                 + "\n".join(rows) + "\n")
    return body


def on_config(config: MkDocsConfig, **kwargs: Any) -> MkDocsConfig:
    """Fill the "API reference" navigation entry of ``config`` with the module pages."""
    nav = config.nav or []
    for i, entry in enumerate(nav):
        if isinstance(entry, dict) and API_SECTION in entry:
            nav[i] = {API_SECTION: [{m: api_page(m)} for m in public_modules()]}
            break
    else:
        raise ValueError(f"mkdocs.yml: the nav needs an entry named {API_SECTION!r}")
    return config


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    """Add the root pages and one API page per public module to ``files``."""
    for uri, source in ROOT_PAGES.items():
        text = source.read_text(encoding="utf-8")
        if source.name == "README.md":
            text = _DOCS_LINK.sub(r"\1", text)
        files.append(File.generated(config, uri, content=text))
    for module in public_modules():
        files.append(File.generated(config, api_page(module), content=module_page(module)))
    return files
