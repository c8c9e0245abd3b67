"""Atomic file writes: every file a run or a converter produces is written to a temporary file in the
same folder, fsynced, then renamed over the old one, so a process killed at any moment leaves either
the previous file or the new one, never a partial file."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
from pathlib import Path

from .usage import NAME_MAX, check_stopped, stop_deferred




TEMP_TAG = ".cycleseg-tmp"                                          # no user's file is named .<name>.cycleseg-tmp<pid>


def temp_name(name: str, pid: int | None = None) -> str:
    """The temporary name of the output `name`: .<name>.cycleseg-tmp<pid> (a user's .x.h5.tmp123 is no
    temporary of ours), with <name> shortened (bytes, as the file system counts them) where the whole would
    pass NAME_MAX: a legal name just under it was refused."""
    tail = f"{TEMP_TAG}{os.getpid() if pid is None else pid}"
    raw = os.fsencode(name)[:NAME_MAX - 1 - len(tail)]
    return f".{os.fsdecode(raw)}{tail}"


@contextlib.contextmanager
def atomic_path(path, replace: bool = True):
    """Yield a temp path next to `path`; when the block succeeds, rename it to `path`. On any error
    the temp file is removed, `path` is untouched and the folders made for it are removed again.
    replace=False: a `path` that appeared meanwhile (another process's output) is kept (commit)."""
    path = Path(path)
    made = make_folders(path.parent)
    tmp = path.with_name(temp_name(path.name))
    done = False
    try:
        yield tmp
        commit(tmp, path, replace)
        done = True
    except OSError as e:
        raise named(e, path) from e
    finally:
        if tmp.exists():
            tmp.unlink()
        if not done:
            remove_empty(made)


def named(e: OSError, path) -> OSError:
    """`e` naming the file asked for, `path`, where it names none or a temporary one (a write or an fsync
    on a full disk names no file; h5py's errors carry their errno inside their text): errors say which
    output could not be written."""
    if e.filename is not None and TEMP_TAG not in str(e.filename):
        return e
    code = e.errno
    if code is None and (m := re.search(r"errno = (\d+)", str(e))):
        code = int(m.group(1))
    if code is None:
        return e
    return OSError(code, e.strerror if e.errno is not None and e.strerror else os.strerror(code), str(path))


def appeared(path) -> FileExistsError:
    return FileExistsError(f"{path} was written by another process while this one worked; it is kept, nothing was "
                           f"replaced (--overwrite replaces it)")


def commit(tmp: Path, path: Path, replace: bool = True) -> None:
    """Rename `tmp` to `path`; replace=False: never over a file there (a hard link fails on one, atomically;
    where a file system has none, a check just before the rename). Not after a stop signal (check_stopped)."""
    check_stopped()
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise appeared(path) from None
    except OSError:                                                  # no hard links here
        if path.exists() or path.is_symlink():
            raise appeared(path) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def file_keys(p) -> set:
    """A path's identities: its resolved path and, if it exists, its (device, inode), so a symbolic or hard
    link to a file is the same file (an output that is an input, a removal that would take an input)."""
    p = Path(p)
    try:
        st = p.stat()
        return {p.resolve(), (st.st_dev, st.st_ino)}
    except FileNotFoundError:
        return {p.resolve()}
    except (OSError, RuntimeError):                                 # a symbolic-link loop (RuntimeError < 3.13)
        return set()


def make_folders(folder: Path) -> list[Path]:
    """mkdir -p `folder`; the folders it created, deepest first (what a failed write takes away again)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty(folders) -> None:
    """Remove those of `folders` that are empty, deepest first: a failed write leaves no folder it made."""
    for p in sorted(set(folders), key=lambda p: len(p.parts), reverse=True):
        try:
            p.rmdir()
        except OSError:
            pass                                                    # not empty, or gone: kept


def atomic_write_bytes(path, write_fn) -> None:
    """Call write_fn(file_object) on a temp file next to `path`, fsync it, then rename it to `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write_fn(f)
        f.flush()
        os.fsync(f.fileno())


STALE = re.compile(r"\.(.+)\.cycleseg-tmp(\d+)")                  # atomic_path's names: temp_name


def remove_stale_temporaries(folder, name: str | None = None, inputs=()) -> list:
    """Delete the temporary files (and write_files' stage folders) that a process killed while writing left in
    `folder`: exactly the names atomic_path and write_files give (temp_name) whose process is gone; only those
    of the file `name` if given. A stage killed during its renames is completed first (complete_commit),
    never removing one of `inputs`. Anything else (a user's file) is kept."""
    gone = []
    for p in Path(folder).glob(f".*{TEMP_TAG}*"):
        m = STALE.fullmatch(p.name)
        if m and (name is None or p.name == temp_name(name, int(m.group(2)))) and not p.is_symlink() \
                and not _alive(int(m.group(2))):
            if p.is_file():
                p.unlink()
            elif p.is_dir():                                        # write_files' stage
                complete_commit(p, int(m.group(2)), inputs)
                shutil.rmtree(p, ignore_errors=True)
            else:
                continue
            gone.append(p.name)
    return gone


JOURNAL = "commit.json"                                             # in a stage: its renames had begun


def complete_commit(stage: Path, pid: int, inputs=()) -> None:
    """A stage whose process `pid` was killed during its renames (its journal written: write_files) is renamed
    into place the rest of the way, and the earlier set's files it was to remove go, so the folder holds the
    new set whole; said in one note. Only what write_files itself writes is obeyed: the folder the stage's
    own name belongs to (a folder, not a link to one), regular files put under it (never through a link),
    names directly in it removed, never one of `inputs`. A stage without a journal was killed before any rename: nothing to do."""
    try:
        plan = loads((stage / JOURNAL).read_text())
        name, remove = plan["folder"], list(plan["remove"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not isinstance(name, str) or not _plain(name) or temp_name(name, pid) != stage.name:
        return
    folder = stage.parent / name
    if folder.is_symlink() or not folder.is_dir():                 # a link: where it leads is not the stage's
        return
    new = stage / "new"
    placed = 0
    for f in sorted(new.rglob("*")) if new.is_dir() and not new.is_symlink() else []:
        if f.is_symlink() or not f.is_file():
            continue
        target = folder / f.relative_to(new)
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.realpath(target.parent) != os.path.join(os.path.realpath(folder), *f.relative_to(new).parts[:-1]):
            continue                                                # a link on the way: not ours to follow
        os.replace(f, target)
        placed += 1
    ins = set().union(*(file_keys(i) for i in inputs))
    removed = 0
    for n in remove:
        t = folder / n if isinstance(n, str) and _plain(n) else None
        if t is not None and (t.is_file() or t.is_symlink()) and not file_keys(t) & ins:
            t.unlink()
            removed += 1
    print(f"note: {folder}: a process killed while renaming its output set into place left part of it; the "
          f"other {placed} file(s) were put there now{f' and {removed} of the earlier set removed' if removed else ''}, "
          f"so it holds that set whole", file=sys.stderr)


def _plain(name: str) -> bool:
    """A file name without a folder part: what a journal may name."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):                     # gone, or no pid at all
        return False
    except PermissionError:                                         # alive, another user's
        return True
    return True


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def write_files(folder, files: dict, replace: bool = True, remove=(), inputs=()) -> None:
    """Write {name: bytes} into `folder`, all or nothing: every file is staged in a temporary folder
    beside it first, the folders the names need are made and no target may be a folder, then committed. A
    folder that does not exist yet gets the stage in one rename; into an existing one each file is renamed
    into place with the file it replaces kept aside, and a failure among the renames puts the replaced files
    back and removes the new ones. A kill during those renames leaves a journal in the stage: the next
    command that writes there, or checks its outputs there (cli.refuse_existing), completes them
    (complete_commit); a stop signal waits for them and the cleanup (stop_deferred). replace=False: a
    target that appeared meanwhile (another process's) is kept and nothing is written (commit). `remove`:
    names of an earlier output set of the same command that this one does not write (with --overwrite),
    taken away in the same commit, so the folder holds one set whole; never one of the command's `inputs`
    (a checkpoint named like an earlier output is an input, not an output)."""
    folder = Path(folder)
    made = make_folders(folder.parent)
    remove_stale_temporaries(folder.parent, folder.name, inputs)     # a stage a killed process left
    ins = set().union(*(file_keys(i) for i in inputs))
    remove = [n for n in dict.fromkeys(remove) if n not in files and not file_keys(folder / n) & ins]
    stage = folder.parent / temp_name(folder.name)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    done = False
    try:
        for name, data in files.items():
            p = stage / "new" / name
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                with open(p, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:                                    # a full disk: the output, not the stage
                raise named(e, folder / name) from e
        with stop_deferred():
            if not (folder.exists() or folder.is_symlink()) and _rename_whole(stage / "new", folder):
                done = True
        if not done:
            for name in files:
                made += make_folders((folder / name).parent)
                if (folder / name).is_dir():
                    raise IsADirectoryError(f"{folder / name} is a folder: nothing written in {folder}")
            with stop_deferred():                                   # renames and cleanup run whole, signal or not
                with open(stage / JOURNAL, "w") as f:               # torn by a kill: no rename had begun
                    f.write(json.dumps({"folder": folder.name, "remove": remove}))
                    f.flush()
                    os.fsync(f.fileno())
                _rename_staged(folder, stage, files, replace, remove)
                done = True
                shutil.rmtree(stage, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not done:
            remove_empty(made)


def _rename_whole(new: Path, folder: Path) -> bool:
    """The staged files become `folder` in one rename (a folder that is not there yet: nothing to replace,
    nothing half-written to see); False where something took its place meanwhile (then file by file)."""
    check_stopped()
    try:
        os.rename(new, folder)
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            return False
        raise named(e, folder) from e
    return True


def _rename_staged(folder: Path, stage: Path, files: dict, replace: bool, remove) -> None:
    """write_files' commit: each staged file renamed into place, the file it replaces and each of `remove`
    kept aside in the stage; on any failure everything is put back as it was."""
    renamed = []                                                    # (target, kept old file or None)
    try:
        for i, name in enumerate(files):
            target, kept = folder / name, None
            if replace and (target.exists() or target.is_symlink()):
                kept = stage / "old" / str(i)
                kept.parent.mkdir(exist_ok=True)
                os.replace(target, kept)
            try:
                commit(stage / "new" / name, target, replace)
            except BaseException:
                if kept is not None:                                # this one's old file back first
                    os.replace(kept, target)
                raise
            renamed.append((target, kept))
        for i, name in enumerate(remove):
            target = folder / name
            if target.is_file() or target.is_symlink():
                kept = stage / "old" / f"removed{i}"
                kept.parent.mkdir(exist_ok=True)
                os.replace(target, kept)
                renamed.append((target, kept))
    except BaseException:
        for target, kept in reversed(renamed):                      # back to what was there
            if kept is not None:
                os.replace(kept, target)
            elif target.exists():
                target.unlink()
        raise


def append_jsonl(path, record: dict) -> None:
    """One JSON line appended (a killed run leaves at most a torn last line, dropped on resume)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def occupied(path) -> bool:
    """Whether something other than a regular file stands where a command keeps or reads a file (a folder, a
    FIFO that would block, a device): every such place is refused with one line naming it."""
    path = Path(path)
    return path.exists() and not path.is_file()


def loads(text):
    """json.loads of a file's text whose every failure on bad text is a ValueError: besides a JSONDecodeError,
    an integer of more than 4300 digits raises ValueError and deep nesting RecursionError (made ValueError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_jsonl(path) -> list[dict]:
    """The JSON objects of a JSON-lines file, one per line; a line that is not one (a torn last line of a
    run killed while writing it, bytes that are not UTF-8, a list or a number, nesting or digits beyond what
    JSON readers parse, an escaped lone surrogate) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            record = loads(line)
            if isinstance(record, dict):
                json.dumps(record, ensure_ascii=False).encode()     # a lone surrogate ("\ud800") in a key or text
        except ValueError:                                          # (UnicodeEncodeError is one): not text a
            continue                                                # picture or table can hold
        if isinstance(record, dict):
            out.append(record)
    return out
