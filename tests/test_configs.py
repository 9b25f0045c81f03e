"""Every benchmark config shipped in ``configs/`` is one ``make bench NAME=...`` can run:
it loads, names known methods and a budget that parses, points at a committed
checkpoint (CPU benchmarks) and is listed in the README; CPU benchmarks also carry the
reference line ``benchmarks.run`` prints beside their table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from benchmarks import run as bench  # the repository's package (pytest's pythonpath)

from rlprune import pipeline
from rlprune.agents.base import check_methods
from rlprune.costs import Budget

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 8, [p.name for p in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_names_what_exists(path: Path) -> None:
    cfg = pipeline.RunConfig(**pipeline.load_config(path))
    assert cfg.budget, f"{path.name} has no budget"
    Budget.parse(cfg.budget)  # raises on a budget string that does not parse
    assert cfg.methods, f"{path.name} names no method"
    check_methods(list(cfg.methods))  # raises on an unknown method
    if path.stem.startswith("gpu-"):
        assert cfg.model, f"{path.name}: a GPU benchmark pretrains a registry model"
    else:
        assert cfg.checkpoint and (ROOT / cfg.checkpoint).is_file(), (
            f"{path.name}: checkpoint {cfg.checkpoint!r} is not committed")
        assert path.stem in bench.REFERENCES, f"{path.stem} has no reference line"


def _readme_names() -> set[str]:
    """Benchmark names the README's Benchmarks section lists, braces expanded."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Benchmarks"):]
    section = section[:section.index("\n## ", 1)]
    names: set[str] = set()
    for token in re.findall(r"`([a-z0-9{},-]+)`", section):
        m = re.fullmatch(r"([a-z0-9-]*)\{([a-z0-9,]+)\}([a-z0-9-]*)", token)
        if m:
            names.update(f"{m[1]}{part}{m[3]}" for part in m[2].split(","))
        else:
            names.add(token)
    return names


def test_readme_lists_every_config() -> None:
    missing = [p.stem for p in CONFIGS if p.stem not in _readme_names()]
    assert not missing, f"README's Benchmarks section does not list {missing}"
