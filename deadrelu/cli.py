"""The `deadrelu` command line.

Start-up stays light: argparse and the standard library only. The Keras backend is chosen first
(`deadrelu.backends.select`: `KERAS_BACKEND`, else TensorFlow; on JAX or PyTorch the first line on
stderr names it), then Keras is imported inside the commands, after TensorFlow's own log noise has been
routed away from the user's terminal (`deadrelu.native_log`: kept, and shown if the process
crashes in native code).

Exit codes: 0 done; 1 done but `--fail-on` exceeded; 2 bad input (one line, no traceback);
3 internal error; 130 interrupted (Ctrl-C); 143 terminated (SIGTERM). Every path is checked before
any work (`check_paths`): no output may be an input, and SIGTERM unwinds like Ctrl-C, so no
temporary file is left.

The library's messages name its Python keywords (`batch_size`); `flag_names` shows them as the
command's flags (--batch-size).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import re
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from deadrelu.commands._common import (
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    check_paths,
    parent_parsers,
)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str):
        sys.stderr.write(f"deadrelu: error: {message}; see '{self.prog} --help'\n")
        raise SystemExit(EXIT_INPUT)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (no TensorFlow import).

    Each module of `deadrelu.commands` defines one command: `ORDER` (its place in --help),
    `register(subparsers, parents)` and `run(args, output) -> exit code`.
    """
    import importlib
    import pkgutil

    import deadrelu.commands
    from deadrelu._version import __version__

    parser = Parser(
        prog="deadrelu",
        description="Find, measure and fix dead ReLU units in Keras models.",
        epilog="KERAS_BACKEND=jax or KERAS_BACKEND=torch runs the commands on that Keras backend (default tensorflow).",
    )
    parser.add_argument("--version", action="version", version=f"deadrelu {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    modules = [
        importlib.import_module(f"deadrelu.commands.{info.name}")
        for info in pkgutil.iter_modules(deadrelu.commands.__path__)
        if not info.name.startswith("_")
    ]
    parents = parent_parsers()
    for module in sorted(modules, key=lambda m: m.ORDER):
        command = module.register(subparsers, parents)
        # USES_KERAS = False: the command never loads Keras (no backend note).
        command.set_defaults(handler=module.run, command_parser=command, uses_keras=getattr(module, "USES_KERAS", True))
    parser.set_defaults(commands=tuple(subparsers.choices))
    return parser


# A keyword in backticks, as library messages name them: `samples`, `labels=`, `force=True`, `labels="y.npy"`.
_KEYWORD = re.compile(r"`([A-Za-z_]\w*)(?:=([^`]*))?`")


def flag_names(message: str, parser: argparse.ArgumentParser | None) -> str:
    """Shows the Python keywords a library message names as the flags of the command that ran.

    A keyword in backticks that is the `dest` of one of `parser`'s options becomes that option's
    long flag, with its value if one is given: `batch_size` → --batch-size, `force=True` → --force,
    `labels="y.npy"` → --labels y.npy. Any other backticked text stays as it is.

    Example:
        >>> flag_names("`samples` must be at least 1 (got 0)", scan_parser)
        '--samples must be at least 1 (got 0)'
    """
    if parser is None:
        return message
    # argparse has no public list of a parser's options; `_actions` includes the parents' ones.
    options = {action.dest: action for action in parser._actions if action.option_strings}

    def to_flag(match: re.Match) -> str:
        action = options.get(match[1])
        if action is None:
            return match[0]
        flag, value = max(action.option_strings, key=len), match[2]
        if not value or (action.nargs == 0 and value == "True"):
            return flag
        with contextlib.suppress(ValueError, SyntaxError):
            literal = ast.literal_eval(value)
            if isinstance(literal, str):
                value = shlex.quote(literal)  # labels="y.npy" → --labels y.npy
        return f"{flag} {value}"

    return _KEYWORD.sub(to_flag, message)


# -- the console ----------------------------------------------------------------------------


def _silence_python_logs() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    with contextlib.suppress(ImportError):
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)


class Output:
    """Where a command writes: the table to stdout, notes and progress to stderr."""

    def __init__(self, args, first: str | None = None):
        from rich.console import Console

        from deadrelu.progress import notebook_shell

        # In a pipe (or a notebook's `!deadrelu`, an 80-column pseudo-terminal) rich would fold the
        # table at 80 columns; give it room instead.
        width = None if sys.stdout.isatty() and not notebook_shell() else 160
        self.quiet = getattr(args, "quiet", False)
        self.out = Console(highlight=False, width=width)
        # `first` (the backend on JAX/PyTorch) is the first line on stderr: written just before
        # whatever the command writes there first, or at the end (`say_first`); an error that comes
        # before anything else (written to sys.stderr itself) so stays the one line it is.
        self._stderr = _FirstLine(sys.stderr, None if self.quiet or not first else f"deadrelu: {first}\n")
        self.err = Console(file=self._stderr, highlight=False, soft_wrap=True)
        self.parser = getattr(args, "command_parser", None)

    def say_first(self) -> None:
        """Writes the first line now, unless something on stderr already brought it (or --quiet)."""
        self._stderr.write("")

    def note(self, message: str, style: str = "yellow") -> None:
        if not self.quiet:
            self.err.print(f"deadrelu: {flag_names(message, self.parser)}", style=style, markup=False, highlight=False)

    @contextlib.contextmanager
    def progress(self, description: str, unit: str = ""):
        """Yields `(on_start, on_batch)` callbacks: a bar on a terminal, plain lines elsewhere.

        `deadrelu.progress.Progress` decides: a pipe, a file or a notebook's `!deadrelu` get a
        line every 5 seconds and one at the end instead of escape codes; --quiet gets nothing.
        """
        from deadrelu.progress import Progress

        with Progress(
            description,
            verbose=0 if self.quiet else 1,
            unit=unit,
            console=self.err,
            transient=True,
            interval=5.0,
            prefix="deadrelu: ",
        ) as bar:
            yield bar.start, bar.advance


class _FirstLine:
    """A text stream that writes one line before the first thing written to it (then passes all through)."""

    def __init__(self, stream, line: str | None):
        self._stream, self._line = stream, line

    def write(self, text: str) -> int:
        if self._line is not None:
            line, self._line = self._line, None
            self._stream.write(line)
        return self._stream.write(text) if text else 0

    def __getattr__(self, name: str):  # isatty, flush, fileno, encoding: the stream's own
        return getattr(self._stream, name)


# -- entry point ----------------------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: the command unwinds as on Ctrl-C, removing its temporary files."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turns SIGTERM into `Terminated` while the block runs (main thread only); a second SIGTERM kills at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error
        return int(exc.code or 0)
    if args.command is None:
        sys.stderr.write(f"deadrelu: error: give a command ({', '.join(args.commands)}); see 'deadrelu --help'\n")
        return EXIT_INPUT
    with sigterm_unwinds():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Checks every path, then runs the command; errors become one line and an exit code."""
    from deadrelu.backends import DEFAULT, select
    from deadrelu.errors import DeadReluError
    from deadrelu.native_log import quiet_native_stderr

    with quiet_native_stderr(not args.verbose):
        try:
            backend = select()  # KERAS_BACKEND, else TensorFlow: before any command imports Keras
            check_paths(args)  # before any work: nothing is loaded, nothing written
            if not args.verbose:
                _silence_python_logs()
            # The backend is the first line on stderr — written before whatever the command writes there
            # first, so an error before anything else stays the one line it is on every backend.
            named = backend != DEFAULT and args.uses_keras
            output = Output(args, first=f"backend: {backend} (KERAS_BACKEND)" if named else None)
            code = args.handler(args, output)
            output.say_first()  # a command that said nothing else on stderr
            if args.uses_keras:
                import deadrelu.kernel as kernel

                reason = kernel.failure()
                if reason is not None:
                    output.note(kernel.unavailable_note(reason))
            return code
        except DeadReluError as exc:
            if args.debug:
                import traceback

                traceback.print_exc()
            sys.stderr.write(f"deadrelu: error: {flag_names(str(exc), args.command_parser)}\n")
            return exc.exit_code
        except KeyboardInterrupt as exc:
            if isinstance(exc, Terminated):
                sys.stderr.write("deadrelu: terminated; no partial output was left\n")
                return EXIT_TERMINATED
            sys.stderr.write("deadrelu: interrupted; no partial output was left\n")
            return EXIT_INTERRUPTED
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if args.debug:
                import traceback

                traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            sys.stderr.write(
                f"deadrelu: internal error: {type(exc).__name__}: {first[:300]} "
                "(rerun with --debug for the traceback, and please report it)\n"
            )
            return EXIT_INTERNAL


def entry() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
