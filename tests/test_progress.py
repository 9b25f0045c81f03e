"""Progress bars: in place on a terminal, a few whole lines in a log file."""

from __future__ import annotations

import io

import pytest
from tqdm.auto import tqdm as auto_tqdm

from rlprune import progress
from rlprune.progress import progress_bar


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_bar_writes_few_whole_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()  # not a terminal
    monkeypatch.setattr("sys.stderr", log)
    bar = progress_bar(total=1000, desc="fit", unit="step")
    for i in range(1000):
        bar.set_postfix(loss=f"{i:.1f}")  # must not force a line per step
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3, text  # the start, the final state (no 30 s went by)
    assert "1000/1000" in lines[-1] and "loss=999.0" in lines[-1] and "fit" in lines[-1]
    assert text.endswith("\n")


def test_log_bar_writes_a_line_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    with progress_bar(total=5, desc="ep") as bar:
        for _ in range(5):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert [line.split("|")[-1].split()[0] for line in lines] == [
        f"{i}/5" for i in range(6)
    ]  # one line per refresh, the final state not repeated


def test_log_bar_wraps_an_iterable(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    assert list(progress_bar(range(7), desc="random")) == list(range(7))
    assert "7/7" in log.getvalue().splitlines()[-1]


def test_disabled_bar_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    for stream in (io.StringIO(), FakeTerminal()):
        monkeypatch.setattr("sys.stderr", stream)
        bar = progress_bar(total=10, disable=True)
        bar.update(3)
        bar.set_postfix(a=1)
        bar.close()
        assert stream.getvalue() == ""


def test_terminal_bar_is_tqdm_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    term = FakeTerminal()
    monkeypatch.setattr("sys.stderr", term)
    bar = progress_bar(total=3, desc="cpl", unit="ep", initial=1)
    assert isinstance(bar, auto_tqdm)
    assert bar.dynamic_ncols and bar.n == 1 and bar.unit == "ep"
    bar.update(2)
    bar.close()
    assert "\r" in term.getvalue()  # redrawn in place
