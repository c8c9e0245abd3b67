"""The grid's cell processes: every cell trains (and is evaluated) in a child process the grid owns.

A stop signal (SIGINT, SIGTERM, SIGHUP) to the grid reaches every running child as SIGTERM (a training run stops after its
step with a checkpoint) and the grid waits for them all: no orphan keeps a cell's folder locked. A grid
killed outright takes its children with it (Linux: PR_SET_PDEATHSIG). Children are told they are cells
(CYCLESEG_GRID_CELL) and leave the line about a stop to the grid. Cells run one at a time or `jobs` at a
time (one GPU shared, or a machine's cores); with several, each line a child prints is prefixed with its
cell's name.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from .usage import GRID_CELL, STOP_SIGNALS, Stopped


class GridInterrupted(RuntimeError):
    """A signal stopped the grid (its running cells stopped with a checkpoint): `signum`, the grid's."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def stop_with_parent() -> None:
    """In a child's process before it starts (Linux): SIGTERM when the grid dies, even by SIGKILL, so that
    no orphan trains on holding the cell's lock (it stops after its step with a checkpoint)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)         # PR_SET_PDEATHSIG


class Children:
    """The grid's running children and the stop signal it received, if any."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.received: list[int] = []
        self.lock = threading.Lock()

    @property
    def stopped(self) -> int | None:
        """The signal that stopped the grid, or None."""
        return self.received[0] if self.received else None

    def run(self, cmd: list[str], label: str | None = None, quiet: bool = False) -> int | None:
        """Run `cmd` to its end: its exit code, or None if the grid was stopped before it could start.
        `label`: prefix each line it prints with it (to stderr); `quiet`: drop its standard output."""
        piped = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, "errors": "replace"}
        with self.lock:
            if self.received:
                return None
            proc = subprocess.Popen(cmd, preexec_fn=stop_with_parent, env={**os.environ, GRID_CELL: "1"},
                                    **(piped if label else {"stdout": subprocess.DEVNULL} if quiet else {}))
            self.procs.append(proc)
        if self.received and proc.poll() is None:                       # a signal between start and append
            proc.send_signal(signal.SIGTERM)
        try:
            if label:
                for line in proc.stdout:
                    if not quiet or line.startswith(("error", "note", "warning", "Traceback")):
                        print(f"[{label}] {line}", end="", file=sys.stderr, flush=True)
            return proc.wait()
        finally:
            with self.lock:
                self.procs.remove(proc)

    def forward(self, signum, frame) -> None:
        """Signal handler: remember the grid's stop signal and pass SIGTERM to every running child (a
        terminal's Ctrl-C has reached them already; a second SIGINT would stop them at once, without a
        checkpoint)."""
        self.received.append(signum)
        running = [proc for proc in self.procs[:] if proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        if not running and len(self.received) == 1:                 # the grid's own work (reading a cell's report,
            raise Stopped(signum)                                   # evaluating in process): it stops there

    @contextlib.contextmanager
    def forwarding(self):
        """The stop signals to the grid forwarded to its children while inside (main thread only)."""
        main = threading.current_thread() is threading.main_thread()
        old = {sig: signal.signal(sig, self.forward) for sig in STOP_SIGNALS} if main else {}
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def run_tasks(tasks: list, work, jobs: int):
    """Yield (task, work(task)) for each task, `jobs` at a time in threads (in order when jobs is 1). After
    a failure no further task starts; the running ones finish, then the first error is raised (a stop by
    signal before any other)."""
    if jobs <= 1:
        for task in tasks:
            yield task, work(task)
        return
    errors: list[BaseException] = []
    failed = threading.Event()

    def guarded(task):                              # no task starts once one failed (a worker takes the next at once)
        if failed.is_set():
            raise Skipped
        try:
            return work(task)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(jobs) as pool:
        running = {pool.submit(guarded, t): t for t in tasks}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                task = running.pop(future)
                if future.cancelled() or isinstance(future.exception(), Skipped):
                    continue
                if future.exception() is not None:
                    errors.append(future.exception())
                    for other in running:
                        other.cancel()
                elif not errors:
                    yield task, future.result()
    if errors:
        raise next((e for e in errors if isinstance(e, GridInterrupted)), errors[0])


class Skipped(Exception):
    """A task not started because another had failed."""
