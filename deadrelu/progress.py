"""Progress of a long job: a bar redrawn in place, plain lines, or nothing.

One class serves the Python API (`deadrelu.scan(..., verbose=1)`) and the command line
(`Output.progress`). Where the output goes decides how progress is shown:

- a terminal: a rich progress bar, redrawn in place;
- a Jupyter notebook (also VS Code and Colab): an HTML bar updated in place through IPython's
  display handles — no ipywidgets needed, and the last state stays in the saved notebook;
- anywhere else — a pipe, a log file, or `!deadrelu ...` in a notebook cell, which runs under a
  pseudo-terminal that shows colours but not cursor moves — plain lines: one every `interval`
  seconds and one at the end.

With `verbose=2` progress is one plain line per step, anywhere (Keras's convention).
"""

from __future__ import annotations

import html
import os
import sys
import time
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from deadrelu.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

SILENT, BAR, LINES = 0, 1, 2


def resolve_verbose(verbose: int | str) -> int:
    """`verbose` as 0, 1 or 2; "auto" is 1 in a notebook or an interactive session, else 0.

    Scripts, the command line's own calls and test runs stay quiet unless they ask.

    Raises:
        UsageError: `verbose` is none of "auto", 0, 1, 2 (`True`/`False` mean 1/0).
    """
    if verbose == "auto":
        return BAR if in_notebook() or _interactive() else SILENT
    if isinstance(verbose, (bool, int)) and 0 <= int(verbose) <= 2:
        return int(verbose)
    raise UsageError(
        f'`verbose` must be "auto", 0 (silent), 1 (progress bar) or 2 (one line per step), got {verbose!r}'
    )


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (Jupyter, VS Code, Colab), where output is HTML."""
    ipython = _ipython()
    if ipython is None:
        return False
    # ipykernel's shell, or a subclass of it (Colab's, VS Code's kernels run ipykernel too).
    return any(base.__name__ == "ZMQInteractiveShell" for base in type(ipython).__mro__)


def notebook_shell() -> bool:
    """Whether this process was started from a notebook cell (`!deadrelu ...`).

    Such a process has a pseudo-terminal (so `isatty()` is true) that the notebook shows as a text
    stream: colours work, cursor moves come out as raw escape codes. Jupyter's kernel launcher sets
    `JPY_PARENT_PID`, and ipykernel sets `PAGER=cat`, `GIT_PAGER=cat` and `CLICOLOR_FORCE=1` for
    the commands a cell runs.
    """
    env = os.environ
    return "JPY_PARENT_PID" in env or (
        env.get("PAGER") == env.get("GIT_PAGER") == "cat" and env.get("CLICOLOR_FORCE") == "1"
    )


def live_terminal(file: IO[str]) -> bool:
    """Whether `file` is a terminal that can redraw a line in place."""
    isatty = getattr(file, "isatty", None)
    try:
        tty = bool(isatty and isatty())
    except ValueError:  # a closed file
        return False
    return tty and os.environ.get("TERM") != "dumb" and not notebook_shell()


class Progress:
    """Shows how far a job has come: `start(total)` once, then `advance(count)` per step.

    Args:
        description: What is being done, e.g. "scanning".
        verbose: 0: nothing; 1: a bar (or plain lines where no bar can be drawn); 2: one line
            per step; "auto": 1 in a notebook or interactive session, else 0. Defaults to `1`.
        unit: What is counted, shown after the counts in plain lines and the notebook bar
            (e.g. "samples"). Defaults to `""`.
        file: Where the bar and the lines go. Defaults to `sys.stdout`, as Keras's progress bar.
        console: A rich console to draw the terminal bar on (its file is used for lines too).
        transient: Remove the terminal bar when the job ends. Defaults to `False`.
        interval: With `verbose=1` where no bar can be drawn, seconds between two plain lines.
            Defaults to `10.0`.
        prefix: Put before each plain line, e.g. "deadrelu: ". Defaults to `""`.

    Example:

    ```python
    with Progress("scanning", verbose=1, unit="samples") as progress:
        progress.start(1000)
        for batch in batches:
            ...
            progress.advance(len(batch))
    ```
    """

    def __init__(
        self,
        description: str,
        *,
        verbose: int | str = 1,
        unit: str = "",
        file: IO[str] | None = None,
        console: Console | None = None,
        transient: bool = False,
        interval: float = 10.0,
        prefix: str = "",
    ) -> None:
        self.description = description
        self.verbose = resolve_verbose(verbose)
        self.unit = unit
        self.console = console
        self.file = console.file if console is not None else file
        self.transient = transient
        self.interval = interval
        self.prefix = prefix
        self.total: int | None = None
        self.done = 0
        self._began = time.monotonic()
        self._view: _View | None = None

    # -- what the job calls ----------------------------------------------------------------

    def start(self, total: int | None) -> None:
        """Sets the number of steps' worth of work to come (`None`: unknown)."""
        self.total = total
        if self._view is not None:
            self._view.update(self)

    def advance(self, count: int = 1) -> None:
        """Counts `count` more done."""
        self.done += count
        if self._view is not None:
            self._view.update(self, step=True)

    # -- the context ------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        self._began = time.monotonic()
        self._view = self._choose_view()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._view is not None:
            self._view.close(self, finished=kind is None)
            self._view = None

    def _choose_view(self) -> _View | None:
        if self.verbose == SILENT:
            return None
        file = self.file or sys.stdout
        if self.verbose == LINES:
            return _Lines(file, interval=0.0)
        if self.console is None and in_notebook():
            return _NotebookBar()
        if live_terminal(file):
            return _TerminalBar(self, file)
        return _Lines(file, interval=self.interval)

    # -- text -------------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        """Seconds since the job began."""
        return time.monotonic() - self._began

    def counts(self) -> str:
        """E.g. "512/1,000 samples (51%)", or "512 samples" when the total is unknown."""
        unit = f" {self.unit}" if self.unit else ""
        if not self.total:
            return f"{self.done:,}{unit}"
        return f"{self.done:,}/{self.total:,}{unit} ({min(self.done / self.total, 1.0):.0%})"

    def line(self, *, finished: bool = False) -> str:
        """One plain line: where the job is, or how it ended."""
        if finished:
            unit = f" {self.unit}" if self.unit else ""
            what = f", {self.done:,}{unit}" if self.done else ""
            return f"{self.prefix}{self.description}: done{what} in {_duration(self.elapsed)}"
        return f"{self.prefix}{self.description}: {self.counts()}, {_duration(self.elapsed)}"


class _View:
    """How progress is shown; `update` after each change, `close` once."""

    def update(self, progress: Progress, *, step: bool = False) -> None:
        raise NotImplementedError

    def close(self, progress: Progress, *, finished: bool) -> None:
        raise NotImplementedError


class _Lines(_View):
    """Plain lines: at most one per `interval` seconds (each step when 0), and one at the end."""

    def __init__(self, file: IO[str], *, interval: float) -> None:
        self.file = file
        self.interval = interval
        self._last = time.monotonic()

    def update(self, progress: Progress, *, step: bool = False) -> None:
        now = time.monotonic()
        if step and (self.interval == 0 or now - self._last >= self.interval):
            self._last = now
            self._write(progress.line())

    def close(self, progress: Progress, *, finished: bool) -> None:
        if finished:
            self._write(progress.line(finished=True))

    def _write(self, text: str) -> None:
        self.file.write(text + "\n")
        self.file.flush()


class _TerminalBar(_View):
    """rich's progress bar on a terminal."""

    def __init__(self, progress: Progress, file: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        console = progress.console or Console(file=file, highlight=False)
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=progress.transient,
        )
        self._bar.start()
        self._task = self._bar.add_task(progress.description, total=None)

    def update(self, progress: Progress, *, step: bool = False) -> None:
        self._bar.update(self._task, total=progress.total, completed=progress.done)

    def close(self, progress: Progress, *, finished: bool) -> None:
        self._bar.stop()


class _NotebookBar(_View):
    """An HTML `<progress>` bar in a notebook output, replaced in place (at most ten times a second)."""

    def __init__(self) -> None:
        from IPython.display import display

        self._handle = display(_BarView("", ""), display_id=True)
        self._last = 0.0

    def update(self, progress: Progress, *, step: bool = False) -> None:
        now = time.monotonic()
        if now - self._last >= 0.1:
            self._last = now
            self._show(progress, finished=False)

    def close(self, progress: Progress, *, finished: bool) -> None:
        self._show(progress, finished=finished)

    def _show(self, progress: Progress, *, finished: bool) -> None:
        if self._handle is None:
            return
        if finished and progress.total is None:
            progress.total = progress.done
        value = f' value="{progress.done}" max="{progress.total}"' if progress.total else ""
        text = progress.line(finished=True) if finished else progress.line()
        bar = (
            f'<div style="font-family:monospace;font-size:12px">{html.escape(progress.description)} '
            f'<progress{value} style="width:22em;vertical-align:middle"></progress> '
            f"{html.escape(progress.counts())} · {_duration(progress.elapsed)}</div>"
        )
        self._handle.update(_BarView(bar, text))


class _BarView:
    """What the notebook shows: the HTML bar, and a plain line for text-only front ends."""

    def __init__(self, html_text: str, plain: str) -> None:
        self.html, self.plain = html_text, plain

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/plain": self.plain, "text/html": self.html}


def _ipython():
    """The running IPython shell, or None (without importing IPython)."""
    module = sys.modules.get("IPython")
    getter = getattr(module, "get_ipython", None)
    return getter() if getter is not None else None


def _interactive() -> bool:
    """An interactive interpreter (the Python or IPython prompt): someone is watching."""
    return hasattr(sys, "ps1") or bool(sys.flags.interactive) or _ipython() is not None


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"
