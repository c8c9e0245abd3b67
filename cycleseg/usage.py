"""How every command reports a usage mistake: one line, `error: ...`, exit status 2, nothing written.
A leaf module (imports nothing of the package), so every command and the data package can use it."""
from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import os
import re
import signal
import sys
import threading
from pathlib import Path


class UsageError(ValueError):
    """An option (or a checkpoint's config) with a value that cannot be used, said in one line."""


NAME_MAX = 255                                                      # bytes in a file name (Linux, macOS)
# What a numeric option's text may be: ASCII digits, a sign, a point, an exponent (Python's int() and float()
# also read "1_000", " 2" and "１２", as 1000, 2 and 12).
NUMBERS = {int: re.compile(r"[+-]?\d+", re.ASCII),
           float: re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|infinity|nan)", re.I | re.ASCII)}


def plain_int(text: str) -> int:
    """int(text) for a whole number written plainly (NUMBERS); ValueError otherwise ("1_0", " 2")."""
    if not NUMBERS[int].fullmatch(text):
        raise ValueError(f"not a whole number written plainly: {text!r}")
    return int(text)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every command's help: the description as written, and each option's default after its help where it
    has one (not None, False or a flag's) that the help does not already say."""

    def _get_help_string(self, action):
        text, value = action.help or "", action.default
        if "default" in text.lower() or any(value is v for v in (None, False, argparse.SUPPRESS)) or action.nargs == 0:
            return text
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value).replace("%", "%%")
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (`error: ...; see <prog> --help`) instead of usage + error, and
    numbers written plainly: int / float options refuse what Python's int() and float() would read as another
    number than a reader sees ("1_0.5" as 10.5) or with spaces around (inf and nan are left to each
    option's range check, which names them)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)                           # -1e-3 a number, not an option (argparse: -1, -.5)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def _get_value(self, action, arg_string):
        pattern = NUMBERS.get(action.type)
        if pattern is not None and not pattern.fullmatch(arg_string):
            plainly = ("a whole number written plainly: digits and an optional sign" if action.type is int else
                       "a number written plainly: digits, a sign, a point, an exponent")
            raise argparse.ArgumentError(action, f"invalid {action.type.__name__} value: {arg_string!r} ({plainly})")
        return super()._get_value(action, arg_string)

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def path_arg(text: str) -> Path:
    """argparse's type for every path option: an empty one (a shell variable left unset) is refused rather
    than read as the working folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (a shell variable left unset?)")
    if problem := long_name(text):                                  # every file call on it fails: said once here
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def long_name(text: str) -> str | None:
    """What is wrong with a path one of whose names is longer than file systems take, or None."""
    long = next((part for part in Path(text).parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long is None:
        return None
    return f"{long[:40]}...: a name of {len(os.fsencode(long))} bytes in the path, longer than file systems take ({NAME_MAX}); shorten it"


def path_text(text: str) -> str:
    """path_arg for options kept as text (a data path that may also name a built-in dataset)."""
    return str(path_arg(text))


TEMPORARY = re.compile(r"\.(.+)\.cycleseg-tmp\d*")                 # fileio.temp_name's .<name>.cycleseg-tmp<pid>


def final_path(path: Path) -> Path:
    """The path a user asked for, behind a temporary one that an atomic write used (a disk that filled up
    while writing `.last.pt.cycleseg-tmp123` failed to write `last.pt`)."""
    parts, staged = [], False
    for part in path.parts:
        if staged and part in ("new", "old"):                       # write_files' stage: <stage>/new/<name>
            staged = False
            continue
        m = TEMPORARY.fullmatch(part)
        parts.append(m.group(1) if m else part)
        staged = m is not None
    return Path(*parts)


def message(e: BaseException) -> str:
    """One line for an error a user can act on: its message on one line; an OS error as what could not be
    written and why (a read-only or full folder, a file where a folder should be)."""
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        where = final_path(Path(e.filename)) if e.filename else None
        if e.errno == errno.ENAMETOOLONG:                             # the checks below would fail on it too
            return f"cannot use {str(where)[:80]}...: a name in it is longer than the file system takes"
        if e.errno == errno.EISDIR and where is not None:                 # read or written: the same fix
            return f"{where} is a folder, where a file is read or written"
        dangling = next((p for p in (where, *where.parents) if p.is_symlink() and not p.exists()), None) \
            if where is not None else None
        if dangling is not None:
            return f"cannot write {where}: {dangling} is a symbolic link that leads nowhere (a loop, or its target is missing)"
        if e.errno in (errno.EEXIST, errno.ENOTDIR) and where is not None:
            blocking = next((p for p in (where, *where.parents) if p.exists() and not p.is_dir()), None)
            if blocking is not None:                                # a file, or /dev/null and its kind
                kind = "a file" if blocking.is_file() else "a device or other special file"
                return f"cannot write {where}: {blocking} is {kind}, not a folder"
        return f"cannot write {where}: {e.strerror}" if where else f"cannot write: {e.strerror}"
    return " ".join(str(e).split())


def say(text: str) -> None:
    """A line on stderr, which may be gone (a closed terminal: EIO; a closed pipe): the exit status says it."""
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass


def drop_stdout(stream=None) -> None:
    """Standard output (or `stream`) to /dev/null from now on (its reader left): later writes and the final
    flush succeed."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), (stream or sys.stdout).fileno())
    except (OSError, ValueError, AttributeError):                   # a stream without a descriptor
        pass


class Unbroken:
    """Standard error that outlives its reader (`train ... 2>&1 | head`, a closed terminal): the first write
    that fails sends it to /dev/null and the command goes on (a note on a closed pipe ended a training before
    its first checkpoint, exit 141). Every other attribute is the stream's."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        try:
            return self.stream.write(text)
        except OSError:                                             # BrokenPipeError, EIO
            self.drop()
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except OSError:
            self.drop()

    def drop(self):
        drop_stdout(self.stream)
        try:
            self.stream.flush()                                     # what it held goes to /dev/null
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


def tell(text: str, write=None) -> None:
    """A line on standard output (`write`: the progress bar's writer), written through: a reader that left
    (`train ... | head -1`, a closed terminal) does not stop a training between its checkpoints; the
    output goes to /dev/null from then on, and stderr says so once."""
    try:
        (write or print)(text)
        sys.stdout.flush()
    except OSError:                                                 # BrokenPipeError, EIO
        drop_stdout()
        say("note: the standard output was closed (its reader left); the command goes on without it")


def first_repeat(values, key=lambda v: v):
    """The first value whose key an earlier one has (an option or list entry given twice), or None."""
    seen: set = set()
    return next((v for v in values if key(v) in seen or seen.add(key(v))), None)


def printable(text) -> str:
    """`text` with each character a terminal would act on (a line break, an escape sequence) written as its
    Python escape: names and attributes read from users' files are shown, never obeyed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


GRID_CELL = "CYCLESEG_GRID_CELL"                                    # set to "1" in a grid's cells (gridprocs)


def grid_cell() -> bool:
    """This process is a grid's cell (experiments): the grid says how it stopped, in one line."""
    return os.environ.get(GRID_CELL) == "1"


def fail(e: BaseException) -> int:
    """Print `error: <message(e)>` on stderr; the exit status 2."""
    if isinstance(e, BrokenPipeError):                             # our reader left: run_command ends quietly
        raise e
    say(f"error: {message(e)}")
    return 2


# The signals that stop a command as Ctrl-C does: a cluster scheduler's notice (SIGTERM), a terminal or ssh
# session closed (SIGHUP): each gets one line, 128 + the signal, temporaries removed, a checkpoint (train).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(BaseException):
    """SIGTERM reached a command (a BaseException, as KeyboardInterrupt is for SIGINT, so that no `except
    Exception` takes it for an error): raised where the command is, so every `finally` and context manager on
    the way out runs and removes its temporaries."""

    def __init__(self, signum: int, written: bool = False):
        super().__init__(signum)
        self.signum, self.written = signum, written                 # written: it came while outputs were committed


_stopping: int | None = None                                        # the stop signal a command received
_deferring = 0                                                      # inside stop_deferred (nested: a count)


def _stop(signum, frame):
    global _stopping
    if _stopping is None:                                           # once: the unwinding's cleanup runs whole
        _stopping = signum
        if not _deferring:
            raise Stopped(signum)


@contextlib.contextmanager
def stop_deferred():
    """A stop signal arriving inside this block (outputs being renamed into place, and the cleanup after) is
    held until the block ends, so that the outputs are committed whole and the temporaries removed; it is
    then raised as Stopped(written=True), whose line says the outputs were written. A stop already received
    is raised before the block starts."""
    global _deferring
    check_stopped()
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _stopping is not None and not _deferring:
        raise Stopped(_stopping, written=True)


def _unraisable(info, hook) -> None:
    if not isinstance(info.exc_value, Stopped):                     # a stop raised inside a garbage collector's
        hook(info)                                                  # callback is dropped there: check_stopped
                                                                    # raises it again before the next output


def check_stopped() -> None:
    """Raise Stopped if a stop signal reached this command: called before every output is renamed into place
    (fileio.commit, write_files). The signal handler raises at once, but an exception raised while Python runs
    a finalizer or weakref callback is dropped there, and the command would otherwise write on."""
    if _stopping is not None and not _deferring:
        raise Stopped(_stopping)


_COMMAND_LINE = False                                               # a `python -m cycleseg.X` process


def _stop_before_start(signum, frame):
    if not grid_cell():
        say(f"error: stopped by {signal.Signals(signum).name} before it began; nothing was written")
    os._exit(128 + signum)                                          # nothing to clean up yet


def _stop_after_finish(signum, frame):
    """A stop signal once the command has finished (the interpreter shutting down): said, and the exit status
    left as the command set it (a signal does not turn work that is done into a failure)."""
    try:
        if not grid_cell():                                         # the grid says what became of its cells
            say(f"note: {signal.Signals(signum).name} arrived after the command had finished; nothing was stopped "
                f"(the exit status is the command's)")
    except Exception:                                               # stderr already gone at the very end
        pass


def _ignore_stops() -> None:
    """At exit (before the interpreter's finalisation resets Python's handlers to the default, which would end a
    finished command by the signal, 128 + it): stop signals ignored, the exit status the command's."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def stop_before_start() -> None:
    """In a command's process from the package's import on (cycleseg/__init__.py, `python -m` only): Ctrl-C
    or SIGTERM while the command still imports ends it with one line and 128 + the signal, not an import
    traceback; run_command takes over when the command starts, and once it has finished notes them without
    failing (a signal during the interpreter's shutdown does not turn a finished command into a failed one)."""
    global _COMMAND_LINE
    if threading.current_thread() is threading.main_thread():
        _COMMAND_LINE = True
        for sig in STOP_SIGNALS:
            signal.signal(sig, _stop_before_start)


def stopped(signum: int) -> int:
    """The one line of a command a signal stopped, and its exit status 128 + the signal."""
    if not grid_cell():
        say(f"error: stopped by {signal.Signals(signum).name} before it finished; nothing it was writing was "
            f"kept (its temporary files are removed) and earlier outputs are as they were")
    return 128 + signum


def run_command(main) -> int:
    """main()'s exit status. A reader that closed our output early (`| head`) ends the command quietly, as
    Unix tools end (status 141, 128 + SIGPIPE), instead of a BrokenPipeError traceback. Ctrl-C or SIGTERM
    (which a command that stops gracefully, train, handles itself) unwinds the command, removing its
    temporary files and keeping earlier outputs as they were, and ends it with one line and 128 + the
    signal, instead of a traceback."""
    global _stopping
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS} if main_thread else {}
    _stopping, hook = None, sys.unraisablehook
    sys.unraisablehook = lambda info: _unraisable(info, hook)
    stderr = sys.stderr
    sys.stderr = Unbroken(stderr) if stderr is not None and not isinstance(stderr, Unbroken) else stderr
    try:
        code = main()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        drop_stdout()                                               # the interpreter's final flush too
        return 141
    except (KeyboardInterrupt, Stopped) as e:
        if isinstance(e, Stopped) and e.written:
            if not grid_cell():
                say(f"error: stopped by {signal.Signals(e.signum).name} as it finished writing its outputs: they "
                    f"are complete; nothing else was written")
            return 128 + e.signum
        return stopped(e.signum if isinstance(e, Stopped) else signal.SIGINT)
    except Exception:                                               # a library that wrapped our Stopped in its own
        if _stopping is None:                                       # error (torch.onnx's exporter): still the stop
            raise
        return stopped(_stopping)
    finally:
        sys.unraisablehook = hook
        sys.stderr = stderr
        for sig, handler in previous.items():                       # done: a command line's process notes them
            signal.signal(sig, _stop_after_finish if _COMMAND_LINE else handler)
        if _COMMAND_LINE and previous:                              # until the interpreter's shutdown, which puts
            atexit.register(_ignore_stops)                          # back the default (death by the signal)
        _stopping = None
