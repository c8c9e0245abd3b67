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
    """A resumed run removes what a killed writer left (.<file>.cycleseg-tmp<pid> of a process that is gone)
    and nothing else: a user's files that look alike (.x.h5.tmp99999 was taken for ours), and a live
    process's temporary, stay."""
    import subprocess
    import sys

    from cycleseg.fileio import remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    names = {f".last.pt.cycleseg-tmp{dead}": False, ".notes.tmp": True, ".data.tmp.bak": True, ".x.tmp12ab": True,
             f".x.h5.tmp{dead}": True, f".best.pt.cycleseg-tmp{os.getpid()}": True,
             f".config.json.cycleseg-tmp{os.getppid()}": True}
    for name in names:
        (tmp_path / name).write_text("x")
    assert remove_stale_temporaries(tmp_path) == [f".last.pt.cycleseg-tmp{dead}"]
    assert {p.name for p in tmp_path.iterdir()} == {n for n, kept in names.items() if kept}


def test_errors_name_the_file_asked_for_not_its_temporary():
    import errno

    from cycleseg.usage import message

    full = OSError(errno.ENOSPC, "No space left on device", "/runs/r/.last.pt.cycleseg-tmp4242")
    assert message(full) == "cannot write /runs/r/last.pt: No space left on device"
    staged = OSError(errno.ENOSPC, "No space left on device", "/out/.masks.cycleseg-tmp42/new/x_mask.png")
    assert message(staged) == "cannot write /out/masks/x_mask.png: No space left on device"
    mine = OSError(errno.ENOSPC, "No space left on device", "/data/.x.h5.tmp42")  # a user's name: kept as it is
    assert message(mine) == "cannot write /data/.x.h5.tmp42: No space left on device"


def test_a_full_disk_names_the_output_where_the_error_names_none(tmp_path, monkeypatch):
    """A write or fsync on a full disk raises ENOSPC without a file name, and h5py's errors carry their errno
    in their text with the temporary's name: predict, plot and the grid said "cannot write: No space left on
    device", the converter named its temporary. Both writers now name the output asked for."""
    import errno

    import h5py

    from cycleseg import fileio
    from cycleseg.usage import message

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full)
    with pytest.raises(OSError) as e:
        fileio.write_files(tmp_path / "out", {"sub/a.png": b"x"})
    assert message(e.value) == f"cannot write {tmp_path / 'out' / 'sub' / 'a.png'}: No space left on device"
    with pytest.raises(OSError) as e:
        fileio.atomic_write_text(tmp_path / "plot.png", "x")
    assert message(e.value) == f"cannot write {tmp_path / 'plot.png'}: No space left on device"
    monkeypatch.undo()

    def h5_full(*a, **k):
        raise OSError(f"Unable to synchronously create file (unable to open file: name = "
                      f"'{tmp_path / '.x.h5.cycleseg-tmp537'}', errno = 30, error message = 'Read-only file system')")

    monkeypatch.setattr(h5py, "File", h5_full)
    with pytest.raises(OSError) as e, fileio.atomic_path(tmp_path / "x.h5") as tmp:
        h5py.File(tmp, "w")
    assert message(e.value) == f"cannot write {tmp_path / 'x.h5'}: Read-only file system"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_write_files_is_all_or_nothing(tmp_path, monkeypatch):
    """A failure among the renames (here the third of three) puts back the files replaced and removes the new
    ones: the folder is as it was, with no temporary left beside it; a folder among the targets is refused
    before any file is touched."""
    from cycleseg import fileio

    out = tmp_path / "out"
    fileio.write_files(out, {"a.txt": b"old a", "sub/b.txt": b"old b"})
    real, calls = os.replace, []

    def third_fails(src, dst):
        calls.append(dst)
        if str(dst).endswith("c.txt"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", third_fails)
    with pytest.raises(OSError, match="No space"):
        fileio.write_files(out, {"a.txt": b"new a", "sub/b.txt": b"new b", "c.txt": b"new c"})
    monkeypatch.setattr(fileio.os, "replace", real)
    assert len(calls) > 3                                        # the first two were in place before the failure
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.txt")} == \
        {"a.txt": b"old a", "sub/b.txt": b"old b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (out / "d.txt").mkdir()
    with pytest.raises(IsADirectoryError, match="d.txt is a folder"):
        fileio.write_files(out, {"a.txt": b"new a", "d.txt": b"new d"})
    assert (out / "a.txt").read_bytes() == b"old a"
    fileio.write_files(out, {"a.txt": b"new a", "c.txt": b"new c"})
    assert (out / "a.txt").read_bytes() == b"new a" and (out / "sub/b.txt").read_bytes() == b"old b"


def test_a_damaged_checkpoint_is_named_without_torchs_advice(tmp_path):
    """Random bytes, a zip without torch's records, a file cut short: 'corrupt, truncated or not a torch
    checkpoint' with torch's reason in its first sentence, never its advice to load with weights_only=False
    (which would run the file's code) or to file a report."""
    import zipfile

    good = tmp_path / "good.pt"
    checkpoint.save(good, {"step": 1, "w": __import__("torch").zeros(1000)})
    (tmp_path / "random.pt").write_bytes(os.urandom(5000))
    with zipfile.ZipFile(tmp_path / "zip.pt", "w") as z:
        z.writestr("archive/data.pkl", b"garbage")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:300])
    for name in ("random.pt", "zip.pt", "cut.pt"):
        with pytest.raises(CheckpointError) as e:
            checkpoint.load(tmp_path / name)
        text = str(e.value)
        assert f"{name}: could not be read as a checkpoint: the file is corrupt, truncated" in text, text
        assert "weights_only" not in text and "file an issue" not in text and "Could this error" not in text, text
        assert text.endswith(")") and "\n" not in text


def test_a_name_just_under_the_limit_is_written(tmp_path):
    """The temporary name .<name>.cycleseg-tmp<pid> of a legal 251-byte name passed 255 bytes: "File name too long"."""
    from cycleseg.fileio import atomic_write_text, remove_stale_temporaries, temp_name, write_files

    name = "b" * 248 + ".h5"
    atomic_write_text(tmp_path / name, "x")
    write_files(tmp_path / ("d" * 250), {"é" * 120 + ".csv": b"y"})   # two-byte characters: cut on bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "d" * 250])
    assert (tmp_path / ("d" * 250) / ("é" * 120 + ".csv")).read_bytes() == b"y"
    stale = tmp_path / temp_name(name, pid=2 ** 22 + 1)              # a killed process's: found by its file's name
    stale.write_text("half")
    assert len(stale.name.encode()) == 255 and remove_stale_temporaries(tmp_path, name) == [stale.name]


def test_write_files_removes_an_earlier_set_in_the_same_commit(tmp_path, monkeypatch):
    """`remove` (an earlier output set's files the new one does not write, with --overwrite) goes with the
    commit: a failure while taking them away puts back every file as it was."""
    from cycleseg import fileio

    out = tmp_path / "out"
    fileio.write_files(out, {"report.json": b"old", "volumes.csv": b"old v", "x.csv": b"old x"})
    real = os.replace

    def failing(src, dst):
        if str(src).endswith("x.csv"):
            raise OSError(28, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", failing)
    with pytest.raises(OSError):
        fileio.write_files(out, {"report.json": b"new"}, remove=["report.json", "volumes.csv", "x.csv"])
    monkeypatch.undo()
    assert {f.name: f.read_bytes() for f in out.iterdir()} == {"report.json": b"old", "volumes.csv": b"old v",
                                                                "x.csv": b"old x"}
    fileio.write_files(out, {"report.json": b"new"}, remove=["report.json", "volumes.csv", "x.csv", "absent"])
    assert {f.name: f.read_bytes() for f in out.iterdir()} == {"report.json": b"new"}


def test_a_set_killed_while_renaming_is_completed_by_the_next_command(tmp_path, capsys):
    """SIGKILL during write_files' renames into a folder that holds files (a predict of 200 images: 601
    renames) left part of the new set beside the old one, and the stage beside the folder; the rerun refused
    on the files found. The commit's journal now lets the next command that writes there, or checks its
    outputs there, put the rest in place (one note); a folder that did not exist gets its set in one rename."""
    import subprocess
    import sys

    from cycleseg import fileio
    from cycleseg.cli import refuse_existing

    out = tmp_path / "out"
    old = {f"f{i:02d}.txt": b"old" for i in range(30)}
    fileio.write_files(out, {**old, "mine.txt": b"mine"})
    script = (f"import os, cycleseg.fileio as f\n"
              f"real, n = f.commit, [0]\n"
              f"def commit(*a, **k):\n"
              f"    real(*a, **k); n[0] += 1\n"
              f"    if n[0] == 10: os.kill(os.getpid(), 9)\n"
              f"f.commit = commit\n"
              f"f.write_files({str(out)!r}, {{f'f{{i:02d}}.txt': b'new' for i in range(30)}}, "
              f"remove=['mine.txt'])\n")
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    assert sorted(f.read_bytes() for f in out.glob("f*.txt")).count(b"new") == 10     # a part, as killed
    assert [p for p in tmp_path.iterdir() if fileio.TEMP_TAG in p.name]
    capsys.readouterr()
    with pytest.raises(Exception, match="f00.txt exists already .* to replace it, or"):     # one file: "it"
        refuse_existing([out / "f00.txt"], False, "an earlier set")
    assert "the other 20 file(s) were put there now and 1 of the earlier set removed, so it holds that set whole" \
        in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == {f"f{i:02d}.txt": b"new" for i in range(30)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    def no_commit(*a, **k):
        raise AssertionError("a file renamed alone")

    fresh = tmp_path / "fresh"
    real, fileio.commit = fileio.commit, no_commit
    try:
        fileio.write_files(fresh, {f"f{i}.txt": b"x" for i in range(5)})
    finally:
        fileio.commit = real
    assert sorted(p.name for p in fresh.iterdir()) == [f"f{i}.txt" for i in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "out"]


def test_a_forged_journal_touches_nothing_outside_its_own_set(tmp_path, capsys):
    """A stale stage with a hand-written journal was obeyed blindly: it named a sibling folder, removed a file
    through a link and the command's own checkpoint, and wrote through a linked subfolder. Only what
    write_files writes is obeyed now: the stage's own folder (not a link), regular files under it never
    through a link, names directly in it, never one of the command's inputs."""
    import json

    from cycleseg import fileio

    pid = 2 ** 22 + 3                                                # no such process
    outside, victim, out = tmp_path / "outside", tmp_path / "victim", tmp_path / "out"
    for d in (outside, victim, out):
        d.mkdir()
    (outside / "secret.txt").write_text("secret")
    (victim / "keep.txt").write_text("keep")
    (out / "model.pt").write_text("checkpoint")
    (out / "lnk").symlink_to(outside)
    (out / "sub").symlink_to(outside)

    def forge(folder_name: str, remove, new_files=()):
        stage = tmp_path / fileio.temp_name("out", pid)
        for rel in new_files:
            (stage / "new" / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / "new" / rel).write_text("planted")
        stage.mkdir(exist_ok=True)
        (stage / fileio.JOURNAL).write_text(json.dumps({"folder": folder_name, "remove": remove}))

    forge("victim", ["keep.txt"], ["a.png"])                         # another folder's name
    fileio.write_files(out, {"x.png": b"x"}, inputs=[out / "model.pt"])
    assert (victim / "keep.txt").exists() and not (victim / "a.png").exists()
    forge("out", ["model.pt", "lnk/secret.txt", "../victim/keep.txt"], ["sub/evil.txt", "b.png"])
    fileio.write_files(out, {"y.png": b"y"}, inputs=[out / "model.pt"])
    assert (out / "model.pt").read_text() == "checkpoint" and (outside / "secret.txt").exists()
    assert (victim / "keep.txt").exists() and not (outside / "evil.txt").exists()
    assert (out / "b.png").read_text() == "planted"                  # its own set, put in place, said
    assert "the other 1 file(s) were put there now" in capsys.readouterr().err
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "keep.txt").write_text("keep")
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    stage = tmp_path / fileio.temp_name("linked", pid)
    stage.mkdir()
    (stage / fileio.JOURNAL).write_text(json.dumps({"folder": "linked", "remove": ["keep.txt"]}))
    fileio.remove_stale_temporaries(tmp_path)
    assert (tmp_path / "real" / "keep.txt").exists() and not stage.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linked", "out", "outside", "real", "victim"]
