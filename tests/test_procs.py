"""The tests' subprocesses (tests/procs.py) end at their limit even when a grandchild holds the output
open, and leave nothing running."""
import sys
import time
from pathlib import Path

import pytest

import procs

# A child that starts a grandchild in a session of its own (as torchrun does with its workers), both
# holding stdout, then sleeps: subprocess.run(capture_output=True, timeout=1) waits here for 60 s.
HOLDER = """
import subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(g.pid, flush=True)
time.sleep(60)
"""


def test_a_timeout_fails_the_test_at_its_limit_with_the_output():
    t0 = time.time()
    with pytest.raises(AssertionError, match="ran past 1 s"):
        procs.run([sys.executable, "-c", "import sys, time; print('started', file=sys.stderr, flush=True); "
                   "time.sleep(60)"], 1)
    assert time.time() - t0 < 10


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"   # a zombie
    except FileNotFoundError:
        return True


def test_a_grandchild_holding_the_output_does_not_hold_the_test_nor_outlive_it():
    t0 = time.time()
    p = procs.Proc([sys.executable, "-c", HOLDER])
    with pytest.raises(AssertionError, match="ran past 2 s"):
        p.wait(2)
    assert time.time() - t0 < 10
    grandchild = int(p.stdout.split()[0])
    for _ in range(100):                           # SIGKILL is delivered asynchronously
        if gone(grandchild):
            break
        time.sleep(0.05)
    assert gone(grandchild) and gone(p.p.pid)


def test_output_and_exit_status_come_back():
    r = procs.run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"], 60)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
