"""Subprocesses of the tests, which can neither hang the test session nor outlive it.

subprocess.run(capture_output=True, timeout=...) is not enough: at the timeout it kills the child only,
then waits for the end of its pipes, which grandchildren keep open (torchrun's workers run in sessions
of their own; a process pool's workers; an orphaned compile) -- a bounded test becomes an unbounded wait.
Here the output goes to files, not pipes, and at the timeout or the test's end the child and all its
descendants are killed (found through /proc before any is killed, so that none is orphaned out of
reach; the child leads a process group of its own as well). A timeout fails the test with the command
and the tail of what it printed."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), from /proc; [] where there is none."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:                                             # ended while being read
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


class Proc:
    """A started command: wait, signal or kill it; its stdout and stderr as text at any time."""

    def __init__(self, cmd, **kw):
        self.cmd = [str(c) for c in cmd]
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self.p = subprocess.Popen(self.cmd, stdout=self._out, stderr=self._err, start_new_session=True, **kw)
        LIVE.append(self)

    @property
    def returncode(self):
        return self.p.returncode

    def _read(self, f) -> str:
        f.seek(0)
        return f.read().decode(errors="replace")

    @property
    def stdout(self) -> str:
        return self._read(self._out)

    @property
    def stderr(self) -> str:
        return self._read(self._err)

    def send_signal(self, sig):
        self.p.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit status; past `timeout` seconds the child and its descendants are killed and the test fails."""
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{' '.join(self.cmd[:6])} ... ran past {timeout} s; its stderr ends:\n"
                                 f"{self.stderr[-3000:]}") from None

    def kill(self):
        """SIGKILL to the child's descendants, its group and the child, then reap the child."""
        for pid in descendants(self.p.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()


LIVE: list[Proc] = []          # killed at the end of each test by conftest's reap_subprocesses


def run(cmd, timeout: float, **kw) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True) that fails the test at `timeout` seconds."""
    p = Proc(cmd, **kw)
    try:
        p.wait(timeout)
    finally:
        p.kill()
    return subprocess.CompletedProcess(p.cmd, p.returncode, p.stdout, p.stderr)
