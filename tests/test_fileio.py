"""Atomic writes and the JSON-lines log: a failed or killed write never leaves a partial file."""
import os

import pytest

from cycleseg import checkpoint
from cycleseg.checkpoint import CheckpointError
from cycleseg.fileio import append_jsonl, atomic_write_bytes, read_jsonl


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"step": 1})

    def explode(f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, explode)
    assert checkpoint.load(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_round_trip_and_errors(tmp_path):
    checkpoint.save(tmp_path / "a" / "c.pt", {"x": [1, 2]})                 # the folder is created
    assert checkpoint.load(tmp_path / "a" / "c.pt") == {"x": [1, 2]}
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.load(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        checkpoint.load(tmp_path / "bad.pt")


def test_jsonl_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"step": 1})
    append_jsonl(path, {"step": 2})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')                                          # killed mid-write
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


class Payload:
    """Unpickling this runs code: what a malicious checkpoint would carry."""

    def __reduce__(self):
        import os
        return (os.system, ("touch PAYLOAD_RAN",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import pickle
    import torch
    torch.save({"config": {}, "nets": {"G_IS": {}}, "extra": Payload()}, tmp_path / "evil.pt", pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused: it holds Python objects"):
        checkpoint.load(tmp_path / "evil.pt")
    assert not (tmp_path / "PAYLOAD_RAN").exists()


def test_only_a_dead_writers_temporaries_are_removed(tmp_path):
    """A resumed run removes what a killed writer left (.<file>.tmp<pid> of a process that is gone) and
    nothing else: a user's files that look alike, and a live process's temporary, stay."""
    import subprocess
    import sys

    from cycleseg.fileio import remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    names = {f".last.pt.tmp{dead}": False, ".notes.tmp": True, ".data.tmp.bak": True, ".x.tmp12ab": True,
             f".best.pt.tmp{os.getpid()}": True, f".config.json.tmp{os.getppid()}": True}
    for name in names:
        (tmp_path / name).write_text("x")
    assert remove_stale_temporaries(tmp_path) == [f".last.pt.tmp{dead}"]
    assert {p.name for p in tmp_path.iterdir()} == {n for n, kept in names.items() if kept}


def test_errors_name_the_file_asked_for_not_its_temporary():
    import errno

    from cycleseg.usage import message

    full = OSError(errno.ENOSPC, "No space left on device", "/runs/r/.last.pt.tmp4242")
    assert message(full) == "cannot write /runs/r/last.pt: No space left on device"
    staged = OSError(errno.ENOSPC, "No space left on device", "/out/.masks.tmpa1b2_c3/x_mask.png")
    assert message(staged) == "cannot write /out/masks/x_mask.png: No space left on device"
