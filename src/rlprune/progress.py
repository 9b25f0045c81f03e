"""Progress bars that suit both a terminal and a log file.

Every progress bar of rlprune is made by :func:`progress_bar`::

    from rlprune.progress import progress_bar

    bar = progress_bar(total=n, desc="cpl", unit="ep", disable=not progress)
    for ...:
        bar.update(1)
        bar.set_postfix(best=f"{best:.4f}")  # never forces a redraw in a log
    bar.close()

On a terminal (or in a Jupyter notebook) it is the usual ``tqdm.auto`` bar, redrawn
in place and sized to the window. When stderr is a file or a pipe (a job log, ``2>
run.log``, a CI console) it writes whole lines instead, at most one every
:data:`LOG_INTERVAL` seconds, and the final state when the bar is closed: a one-epoch
fine-tune logs a handful of lines instead of one per step. ``set_postfix`` and
``set_description`` update the text of the next line without writing one.

This module imports nothing from rlprune, so any module may use it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import autonotebook as _autonotebook
from tqdm.auto import tqdm as _auto_tqdm
from tqdm.std import tqdm as _std_tqdm

__all__ = ["progress_bar", "LOG_INTERVAL"]

#: Seconds between two lines of a bar written to a file or pipe (not a terminal).
LOG_INTERVAL = 30.0


if TYPE_CHECKING:  # types-tqdm makes tqdm generic in its items; the runtime class is not
    _TqdmBase = _std_tqdm[Any]
else:
    _TqdmBase = _std_tqdm


class _LogBar(_TqdmBase):
    """A tqdm bar for logs: one whole line per refresh, rate-limited, no ``\\r`` redraws."""

    # types-tqdm declares display() -> None, but tqdm returns whether it wrote, and close()
    # reads that: False here keeps close() from clearing the line
    def display(  # type: ignore[override]
        self, msg: str | None = None, pos: int | None = None
    ) -> bool:
        if msg == "":  # tqdm clearing a bar that is not left: nothing to clear in a log
            return False
        self.fp.write((self.__str__() if msg is None else msg) + "\n")
        self.fp.flush()
        return True

    def set_description(self, desc: str | None = None, refresh: bool | None = True) -> None:
        super().set_description(desc, refresh=False)

    def set_description_str(self, desc: str | None = None,
                            refresh: bool | None = True) -> None:
        super().set_description_str(desc, refresh=False)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool | None = True,
                    **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        super().set_postfix_str(s, refresh=False)

    def close(self) -> None:
        if not self.disable and getattr(self, "last_print_n", self.n) != self.n:
            self._ema_dt = lambda: None  # the final line shows the overall rate
            try:
                self.display()  # the final state, unless the last line already shows it
            except ValueError:  # the stream was closed (interpreter shutdown)
                pass
        self.leave = False  # nothing more to write: the log keeps every line
        super().close()


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(
    iterable: Iterable[Any] | None = None,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    disable: bool = False,
    initial: float = 0,
    leave: bool = False,
) -> _std_tqdm[Any]:
    """A tqdm progress bar on stderr that stays readable when stderr is a log file.

    Arguments mean what they mean to ``tqdm``: ``iterable`` to wrap (or ``None`` and
    call ``update``), ``total`` steps, ``desc`` the label, ``unit`` of a step
    (``"step"``, ``"ep"``), ``disable`` to show nothing (``disable=not progress``),
    ``initial`` steps already done (a resumed search), ``leave`` to keep the finished
    bar on a terminal (a log always keeps its lines). Returns the ``tqdm`` object:
    ``update``, ``set_postfix``, ``set_postfix_str``, ``set_description`` and
    ``close`` (or use it as a context manager).
    """
    kwargs: dict[str, Any] = {"total": total, "desc": desc, "unit": unit, "disable": disable,
                              "initial": initial, "leave": leave}
    if disable:
        return _std_tqdm(iterable, **kwargs)
    if _autonotebook.tqdm is not _std_tqdm or _is_terminal(sys.stderr):
        # a terminal or a notebook widget: redrawn in place, as tqdm does by default
        return _auto_tqdm(iterable, dynamic_ncols=True, **kwargs)
    return _LogBar(iterable, mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL, **kwargs)
