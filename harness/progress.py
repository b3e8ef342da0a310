"""Progress bars for the stages of a run: one bar per stage that moves per item, "stage k/n" and an overall ETA.

A stage opens a `StageBar` (through `harness.pipeline.stages.progress_bar`) and counts its work with `update(n)`
when a chunk of requests is done. A backend that finishes requests one by one inside a chunk (a row of a batch
reaching its end-of-sequence token, one HTTP reply) calls `item_done()`: the open bar moves at once, and the
chunk's later `update` counts only what was not ticked yet. `run_progress(n_stages)` around a run numbers the
bars "stage k/n" and shows the overall ETA: the current stage's remaining time plus, for the stages still to come,
the mean time of the finished ones (this stage's projected time before any has finished). Bars are off when
quiet or when stderr is not a terminal (set HARNESS_PROGRESS=1 to force them on).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

FORCE_ENV = "HARNESS_PROGRESS"


@dataclass
class RunProgress:
    """Where a run stands: stages planned and opened, and how long each finished stage took."""

    n_stages: int | None = None
    opened: int = 0
    stage_seconds: list[float] = field(default_factory=list)

    def overall_eta(self, stage_remaining: float | None, stage_elapsed: float = 0.0) -> float | None:
        """Seconds left for the whole run: this stage's remaining plus, for each stage to come, the mean time of
        the finished stages (before any has finished: this stage's projected time)."""
        if stage_remaining is None:
            return None
        later = max((self.n_stages or self.opened) - self.opened, 0)
        if self.stage_seconds:
            mean = sum(self.stage_seconds) / len(self.stage_seconds)
        else:
            mean = stage_elapsed + stage_remaining
        return stage_remaining + later * mean


_LOCK = threading.Lock()
_OPEN: list[StageBar] = []  # the bars open now, innermost last
_RUN: list[RunProgress] = []


def bars_enabled(quiet: bool, stream: Any = None) -> bool:
    """Whether bars are drawn: not quiet, and stderr a terminal (or HARNESS_PROGRESS=1)."""
    if quiet:
        return False
    if os.environ.get(FORCE_ENV, "") == "1":
        return True
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _fmt_s(s: float) -> str:
    s = round(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class StageBar(tqdm):
    """A tqdm bar for one stage that backends can move per item (`item_done`) inside a chunk."""

    def __init__(self, total: int, desc: str, quiet: bool, leave: bool = True, unit: str = "req"):
        self.run = _RUN[-1] if _RUN else None
        if self.run is not None:
            self.run.opened += 1
            n = max(self.run.n_stages or 0, self.run.opened)
            desc = f"stage {self.run.opened}/{n} {desc}" if self.run.n_stages else f"stage {self.run.opened} {desc}"
        self._credit = 0
        self._t0 = time.time()
        super().__init__(total=total, desc=desc, unit=unit, disable=not bars_enabled(quiet), file=sys.stderr,
                         leave=leave, dynamic_ncols=True)

    def __enter__(self) -> StageBar:
        with _LOCK:
            _OPEN.append(self)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        with _LOCK:
            if self in _OPEN:
                _OPEN.remove(self)
        if self.run is not None:
            self.run.stage_seconds.append(time.time() - self._t0)
        return super().__exit__(*exc)

    @property
    def format_dict(self) -> dict[str, Any]:
        """tqdm's, with the count shown as whole items (parts of requests move the bar, not the count)."""
        d = super().format_dict
        d["n"] = int(d["n"] + 1e-6)
        return d

    def _room(self, n: float) -> float:
        return max(min(n, self.total - self.n), 0) if self.total else n

    def tick(self, n: float = 1) -> None:
        """`n` items (or parts of items) finished inside the current chunk: move now; the chunk's `update` counts
        only the rest."""
        n = self._room(n)
        self._credit += n
        self._move(n)

    def update(self, n: float | None = 1) -> bool | None:
        """A chunk of `n` items is done (items already ticked are not counted twice)."""
        n = float(n or 0)
        used = min(n, self._credit)
        self._credit -= used
        rest = n - used
        return self._move(self._room(rest) if rest > 1e-6 else 0)

    def _move(self, n: float) -> bool | None:
        if n and self.run is not None and not self.disable:  # the run's ETA, shown with this move
            done, elapsed = self.n + n, max(time.time() - self._t0, 0.0)
            left = (self.total - done) * elapsed / done if self.total else None
            eta = self.run.overall_eta(left, elapsed)
            if eta is not None:
                self.set_postfix_str(f"run ETA {_fmt_s(eta)}", refresh=False)
        return super().update(n) if n else None


def bar_moving() -> bool:
    """Whether `item_done` would move a drawn bar now (the innermost open bar is enabled)."""
    with _LOCK:
        return bool(_OPEN) and not _OPEN[-1].disable


def item_done(n: float = 1) -> None:
    """Called by a backend when `n` requests (or parts of requests) finished: moves the innermost open bar."""
    with _LOCK:
        bar = _OPEN[-1] if _OPEN else None
    if bar is not None and n > 0:
        bar.tick(n)


@contextmanager
def run_progress(n_stages: int | None) -> Iterator[RunProgress]:
    """Number the bars opened inside "stage k/n" (n_stages None: "stage k") with an overall ETA."""
    rp = RunProgress(n_stages)
    _RUN.append(rp)
    try:
        yield rp
    finally:
        _RUN.remove(rp)
