"""Progress bars that also tell a listener how far they are: `tqdm` as usual in the terminal or log, and,
while a build runs, each bar's description, count and total in its live status file (`explorer.build`).

Stage code swaps `from tqdm.auto import tqdm` for `from explorer.core.progress import tqdm` and changes
nothing else; without a listener the bar is plain tqdm.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm as _tqdm

Listener = Callable[[str, float, "float | None", float], None]
"""Called with a bar's description, its count, its total (None when unknown) and its seconds so far."""
REPORT_INTERVAL = 1.0
"""Seconds between two reports to the listener (each one may rewrite a status file)."""

_lock = threading.Lock()
_state: dict[str, Any] = {"listener": None, "interval": REPORT_INTERVAL, "last": -float("inf")}


@contextmanager
def progress_listener(listener: Listener, interval: float = REPORT_INTERVAL) -> Iterator[None]:
    """While inside, every bar of this module reports to `listener`, at most once per `interval` seconds
    over all bars (a new bar reports at once, so the listener always names the current step)."""
    with _lock:
        saved = dict(_state)
        _state.update(listener=listener, interval=interval, last=-float("inf"))
    try:
        yield
    finally:
        with _lock:
            _state.update(saved)


class Progress(_tqdm):
    """`tqdm.auto.tqdm` that reports to the current `progress_listener`, disabled bars included (a bar
    hidden from the terminal still counts for the status file)."""

    def __init__(
        self,
        iterable: Any = None,
        desc: str | None = None,
        total: float | None = None,
        *args: Any,
        **kwargs: Any,
    ):
        self._label = desc or ""
        self._began = time.monotonic()
        super().__init__(iterable, desc, total, *args, **kwargs)
        if self.total is None and iterable is not None and hasattr(iterable, "__len__"):
            self._known_total: float | None = float(len(iterable))
        else:
            self._known_total = None if self.total is None else float(self.total)
        self._report(force=True)

    def update(self, n: float | None = 1) -> bool | None:
        if self.disable:  # tqdm does not count for a disabled bar
            self.n += 1 if n is None else n
        displayed = super().update(n)
        self._report()
        return displayed

    def __iter__(self) -> Iterator[Any]:
        if not self.disable:
            yield from super().__iter__()  # tqdm calls `update` at its own display interval
            return
        for item in self.iterable:
            yield item
            self.n += 1
            self._report()

    def close(self) -> None:
        self._report()
        super().close()

    def _report(self, force: bool = False) -> None:
        with _lock:
            listener = _state["listener"]
            now = time.monotonic()
            if listener is None or (not force and now - _state["last"] < _state["interval"]):
                return
            _state["last"] = now
        listener(self._label, float(self.n), self._known_total, now - self._began)


tqdm = Progress
"""The drop-in name: `from explorer.core.progress import tqdm`."""
