"""`python -m cycleseg.train` with a fault injected, for the tests that kill or break a run in a subprocess
(the package itself has no test hooks):

    FAIL_AT=rank:step   that process raises after that step (a dead process must end a torchrun job)
    SLOW_WRITE=seconds  checkpoint writes pause between the temporary file and its rename (a kill lands
                        inside the write)
"""
import contextlib
import os
import sys
import time

import cycleseg.fileio as fileio
import cycleseg.train as train

if os.environ.get("SLOW_WRITE"):
    real_atomic_path = fileio.atomic_path

    @contextlib.contextmanager
    def slow_atomic_path(path):
        with real_atomic_path(path) as tmp:
            yield tmp
            if str(path).endswith(".pt"):
                time.sleep(float(os.environ["SLOW_WRITE"]))

    fileio.atomic_path = slow_atomic_path

if os.environ.get("FAIL_AT"):
    rank, at = map(int, os.environ["FAIL_AT"].split(":"))
    real_update = train.FiniteGuard.update

    def failing_update(self, terms, step):
        if int(os.environ.get("RANK", "0")) == rank and step == at:
            raise RuntimeError(f"process {rank} failed at step {step} (FAIL_AT)")
        real_update(self, terms, step)

    train.FiniteGuard.update = failing_update

if __name__ == "__main__":
    sys.exit(train.main(sys.argv[1:]))
