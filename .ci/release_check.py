"""Checks of a built release of rlprune, run by ``.ci/wheel-check``.

``release_check.py dist DIR`` checks the sdist and the wheel that ``python -m build``
wrote to ``DIR`` against the source tree: one of each, named with the version of
``rlprune.__version__``; every module, ``py.typed`` and the license in the wheel;
the metadata's version, license, entry point and extras equal to ``pyproject.toml``'s.

``release_check.py installed REPO DEMO`` runs in the fresh environment the wheel was
installed into (with the working directory outside ``REPO``): rlprune is imported
from that environment, not from ``REPO``; every module imports; the names of
``rlprune.__all__`` resolve; the version agrees with the installed metadata; and the
pruned model that ``rlprune demo --out DEMO`` saved loads and runs.

Only the standard library (and, installed, rlprune with its dependencies) is used, so
it runs in either environment.
"""

from __future__ import annotations

import ast
import email
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["check_dist", "check_installed", "main"]


def _fail(msg: str) -> None:
    raise SystemExit(f"release check failed: {msg}")


def _source_version(repo: Path) -> str:
    """``rlprune.__version__`` as written in the source (the one place it lives)."""
    tree = ast.parse((repo / "src/rlprune/__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "__version__"):
            return str(ast.literal_eval(node.value))
    _fail("no __version__ in src/rlprune/__init__.py")
    raise AssertionError  # unreachable: _fail raises


def _pyproject(repo: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: `build` itself depends on tomli there
        import tomli as tomllib

    with open(repo / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _normalise(req: str) -> str:
    """A requirement without spaces and with the extra marker dropped, for comparison."""
    return req.split(";")[0].replace(" ", "").lower()


def check_dist(dist: Path, repo: Path) -> None:
    """Check the sdist and wheel in ``dist`` against the source tree in ``repo``."""
    version = _source_version(repo)
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    if [p.name for p in sdists] != [f"rlprune-{version}.tar.gz"]:
        _fail(f"expected the sdist rlprune-{version}.tar.gz, found {[p.name for p in sdists]}")
    if [p.name for p in wheels] != [f"rlprune-{version}-py3-none-any.whl"]:
        _fail(f"expected the wheel rlprune-{version}-py3-none-any.whl, found "
              f"{[p.name for p in wheels]}")

    with zipfile.ZipFile(wheels[0]) as whl:
        names = set(whl.namelist())
        info = f"rlprune-{version}.dist-info"
        meta = email.message_from_bytes(whl.read(f"{info}/METADATA"))
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    package = repo / "src" / "rlprune"
    wanted = {f"rlprune/{p.relative_to(package).as_posix()}" for p in package.rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    missing = sorted(wanted - names)
    if missing:
        _fail(f"the wheel lacks {missing}")
    if f"{info}/licenses/LICENSE" not in names:
        _fail("the wheel has no LICENSE in its dist-info")

    project = _pyproject(repo)["project"]
    assert isinstance(project, dict)
    if meta["Version"] != version:
        _fail(f"wheel metadata version {meta['Version']} != __version__ {version}")
    if meta["License-Expression"] != project["license"]:
        _fail(f"wheel license {meta['License-Expression']!r} != {project['license']!r}")
    if "rlprune = rlprune.cli:main" not in entry_points:
        _fail(f"no `rlprune` console script in the wheel: {entry_points!r}")
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    if sorted(meta.get_all("Provides-Extra") or []) != sorted(extras):
        _fail(f"wheel extras {meta.get_all('Provides-Extra')} != pyproject's {sorted(extras)}")
    requires = meta.get_all("Requires-Dist") or []
    for extra, reqs in extras.items():
        declared = sorted(_normalise(r) for r in requires if f'extra == "{extra}"' in r)
        if declared != sorted(_normalise(r) for r in reqs):
            _fail(f"extra [{extra}] installs {declared}, pyproject.toml says {reqs}")

    with tarfile.open(sdists[0]) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    for name in ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml",
                 "src/rlprune/py.typed", "src/rlprune/__init__.py"):
        if name not in members:
            _fail(f"the sdist lacks {name}")
    print(f"dist ok: {sdists[0].name}, {wheels[0].name} ({len(wanted)} package files, "
          f"extras {', '.join(sorted(extras))})")


def check_installed(repo: Path, demo: Path) -> None:
    """Check the rlprune importable here: installed, complete, and able to run."""
    import importlib
    import importlib.metadata
    import pkgutil

    import torch

    import rlprune

    where = Path(rlprune.__file__).resolve()
    if where.is_relative_to(repo.resolve()):
        _fail(f"rlprune was imported from the source tree ({where}), not the wheel")
    if "site-packages" not in where.parts:
        _fail(f"rlprune was imported from {where}, not from an installed wheel")
    if importlib.metadata.version("rlprune") != rlprune.__version__:
        _fail(f"installed metadata {importlib.metadata.version('rlprune')} != "
              f"rlprune.__version__ {rlprune.__version__}")
    if not (where.parent / "py.typed").is_file():
        _fail("py.typed is not installed")
    modules = [m.name for m in pkgutil.walk_packages(rlprune.__path__, "rlprune.")]
    for name in modules:
        importlib.import_module(name)
    for name in rlprune.__all__:
        getattr(rlprune, name)

    reports = sorted(demo.glob("best-*/report.json"))
    if not (demo / "compare.md").is_file() or not reports:
        _fail(f"rlprune demo wrote no compare.md or best-*/report.json in {demo}")
    model = rlprune.load(reports[0].parent / "pruned.pt")
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, 1, 8, 8))
    if tuple(out.shape) != (2, 10):
        _fail(f"the demo's pruned model gave an output of shape {tuple(out.shape)}")
    print(f"installed ok: rlprune {rlprune.__version__} at {where.parent}, "
          f"{len(modules)} modules import, the demo's pruned model runs")


def main(argv: list[str]) -> None:
    """``dist DIR`` or ``installed REPO DEMO``; see the module docstring."""
    repo = Path(__file__).resolve().parent.parent
    if len(argv) == 2 and argv[0] == "dist":
        check_dist(Path(argv[1]), repo)
    elif len(argv) == 3 and argv[0] == "installed":
        check_installed(Path(argv[1]), Path(argv[2]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
