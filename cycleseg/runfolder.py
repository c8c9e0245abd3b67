"""The folder of one run, and the one place that writes a run's training files into it:

    config.json      the resolved config
    metrics.jsonl    one JSON line per log step and per evaluation
    curves.png       the loss terms, learning rate and validation scores by step (rewritten at each evaluation)
    samples/         stepNNNNNNN.png pictures of validation images
    last.pt          everything needed to resume exactly; best.pt: the best validation mIoU so far

The resume policy lives here too: a folder that holds a run (any of the files above) is never trained
into again without --resume, and --resume needs its last.pt; the resumed run keeps the checkpoint's
config except the runtime fields and the options marked changeable (options.CHANGEABLE) allow (said on the terminal), and
refuses any other change with the reason. While a run trains its folder is locked (an advisory lock on
the folder, released by the system when the process ends however it ends): a second training into it
stops before touching anything. Every file is written atomically. Off rank 0 (distributed runs) every
write is a no-op: only rank 0 owns the folder. (`python -m cycleseg.evaluate` writes its reports into
eval-*/ folders beside a checkpoint; nothing else writes here.)
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

try:
    import fcntl                                                    # advisory locks (Linux, macOS)
except ImportError:                                                 # Windows: folders are not locked
    fcntl = None

from . import checkpoint, figures
from .config import Config, differing, flat, flat_fields, from_flat, resume_config
from .options import CHANGEABLE, RUNTIME
from .fileio import (append_jsonl, atomic_write_bytes, atomic_write_text, loads, occupied, read_jsonl,
                     remove_stale_temporaries)
from .usage import UsageError, message


# curves.png during a run: a matplotlib redraw takes ~1 s on a small CPU, as long as scoring 1000 validation
# slices, so it is drawn at most every 5 minutes (and at the end); --tensorboard shows the records live
CURVES_EVERY_S = 300.0


def scalars(record: dict):
    """(tag, value) of every number of a metrics record: "<split>/<key>", per-class dicts as
    "<split>/<key>/<class>" (TensorBoard's tags)."""
    split = record["split"]
    for k, v in record.items():
        if k in ("step", "split"):
            continue
        if isinstance(v, dict):
            yield from ((f"{split}/{k}/{c}", float(x)) for c, x in v.items()
                        if isinstance(x, (int, float)) and not isinstance(x, bool))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{split}/{k}", float(v)


def grid_contents(path: Path) -> str | None:
    """What marks `path` as an experiments grid's folder (its results.json, a cell's run folder), or None."""
    if (path / "results.json").is_file():
        return "results.json"
    try:
        cells = sorted(d.name for d in path.glob("*-seed*") if d.name.rsplit("-seed", 1)[1].isdigit()
                       and (d / "config.json").is_file())
    except OSError:
        return None
    return f"the run folder {cells[0]}/" if cells else None


def wrote_records(saved: dict) -> bool:
    """Whether the run of a checkpoint had logged a record by its step: a step that was a log or evaluation
    step, or its last (a run stopped before its first --log-every step has no metrics.jsonl, and none is gone)."""
    c, step = saved.get("config") or {}, saved.get("step", 0)
    every = [v for v in (c.get("log_every"), c.get("eval_every"), c.get("steps")) if isinstance(v, int) and v > 0]
    return step > 0 and step >= min(every, default=1)


RECORD = "JSON objects with a step >= 0, a split and finite numbers"


def finite(value) -> bool:
    """Whether every number in a record (nested in its lists and dicts too) is finite: NaN and Infinity, which
    Python's JSON reader takes, are values no run logs."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    return all(finite(v) for v in value) if isinstance(value, list) else True


class RunFolder:
    def __init__(self, path, rank: int = 0):
        self.path, self.rank = Path(path), rank
        self.writes = rank == 0
        self.last, self.best = self.path / "last.pt", self.path / "best.pt"
        self.metrics = self.path / "metrics.jsonl"
        self._curves_drawn = float("-inf")                          # time.monotonic() of the last curves.png
        self.events = None                                          # a TensorBoard SummaryWriter (--tensorboard)
        self.changes: list = []                                     # what a --resume changes (open, resumed)
        self._gone: str | None = None                               # a resume's deleted metrics.jsonl, said by resumed

    # -- the resume policy --------------------------------------------------------------------------
    def held(self) -> list[str]:
        """The files of a run this folder holds (config.json, metrics.jsonl, checkpoints, pictures)."""
        names = [n for n in ("config.json", "metrics.jsonl", "last.pt", "best.pt") if (self.path / n).exists()]
        if any((self.path / "samples").glob("*.png")):
            names.append("samples/")
        return names

    def lock(self) -> None:
        """Hold the folder for this process (created if missing); FileExistsError if another holds it."""
        if not self.writes or fcntl is None:
            return
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--out {self.path} is a file, not a folder")
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot write the run folder {self.path}: {e.strerror or e}") from e
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UsageError(f"{self.path} is in use by another training process; wait for it to end, or "
                             f"train into another --out") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)                                            # closing the descriptor releases the lock
            self._lock_fd = None

    def resumed(self) -> None:
        """Say what the resume changes (--lr, --steps, ...) and a deleted metrics.jsonl, once every check of it
        has passed."""
        if self.changes:
            self.note(f"resuming {self.last} with " + ", ".join(self.changes))
        if self._gone:
            self.note(self._gone)

    def open(self, cfg: Config, given=()) -> tuple[Config, dict | None]:
        """(config to run with, checkpoint state to resume from or None), after locking the folder.
        `given`: the fields given explicitly (what a resume is asked to change). Refuses to train into a
        folder that holds a run without --resume, and to resume a run that has results (best.pt) but no
        last.pt, and --resume into a folder that holds no run; --resume restarts a run killed before its first
        checkpoint."""
        self.lock()
        for f in (self.path / "config.json", self.metrics, self.last, self.best):
            if occupied(f):                                         # found before a step, not at the first save
                raise UsageError(f"{f} is a folder or special file where the run keeps a file; nothing was written: "
                                 f"move it away, or train into another --out")
        for f in (self.path / "config.json", self.metrics):         # a link: another run's records taken for its own
            if f.is_symlink():
                raise UsageError(f"{f} is a symbolic link (to {os.readlink(f)}) where the run keeps its own records; "
                                 f"nothing was written: put the file itself there, or train into another --out")
        grid = grid_contents(self.path)
        if grid:                                                    # its cells and results would be mixed with a run
            raise UsageError(f"{self.path} holds {grid} (a folder of runs: an experiments grid's, or runs/ itself); a "
                             f"run's files would be mixed with theirs; nothing was written: train into a folder of its "
                             f"own (a grid's cell is trained by rerunning the grid)")
        held, self.changes = self.held(), []
        if cfg.resume and self.last.exists():
            try:
                saved = checkpoint.load_run(self.last)
            except checkpoint.CheckpointError as e:
                raise checkpoint.CheckpointError(
                    f"{e}. --resume cannot go on from it; train again into another --out (or move {self.path} "
                    f"away){'; its best.pt still evaluates' if self.best.exists() else ''}") from e
            self.check_identity(saved["config"])
            cfg, changes = resume_config(saved["config"], cfg, given)
            moved = [c for c in changes if c.split()[0] in ("--data", "--val-data")]
            if moved and not (saved.get("data") or {}).get("fingerprints"):
                raise checkpoint.CheckpointError(
                    f"{self.last} records no content fingerprints of its data (an older cycleseg), so "
                    f"{moved[0].split(' (')[0]} cannot be checked to hold the same images; resume it with its "
                    f"own data path, or start a new run")
            if cfg.steps < saved.get("step", 0):
                raise UsageError(f"--steps {cfg.steps} is below the step {self.last} reached ({saved['step']}): steps "
                                 f"trained cannot be undone; nothing was changed. Resume with --steps "
                                 f"{saved['step']} or more, evaluate a checkpoint as it is, or train into another --out")
            self.changes = changes                                  # said once the resume's checks pass (resumed)
            if not self.metrics.exists() and wrote_records(saved):  # deleted: said once the checks pass
                self._gone = (f"note: {self.metrics} is missing: the records of steps 1..{saved['step']} are gone; the "
                              f"log starts again from step {saved['step']} (curves.png shows only the new records)")
            return cfg, saved
        if self.best.exists() and not self.last.exists():          # results, but nothing to resume from
            raise UsageError(f"{self.path} holds a run ({', '.join(held)}) but no last.pt to resume from; "
                             f"nothing was changed. Train into another --out")
        if held and cfg.resume and not self.last.exists():         # killed before its first checkpoint
            cfg, how = self.restart_config(cfg, given)
            self.note(f"--resume: {self.path} holds a run stopped before its first checkpoint; starting it again "
                      f"from step 0 {how} (its records are rewritten)")
        elif held:
            raise UsageError(f"{self.path} already holds a run ({', '.join(held)}); pass --resume to continue "
                             f"it, or --out to start another")
        elif cfg.resume:                                            # a typo in --out would start a default run
            raise UsageError(f"--resume: {self.path} holds no run to resume (no config.json, no last.pt); nothing "
                             f"was written: check --out, or leave --resume out to start a new run there")
        return cfg, None

    def restart_config(self, cfg: Config, given=()) -> tuple[Config, str]:
        """The config of a run restarted from step 0 (killed before its first checkpoint): the options its
        config.json records, with this command line's runtime fields and the options given explicitly (nothing
        was trained: any may change), and how it was made, for the note. UsageError when config.json cannot
        say an option not given (missing, unreadable, without it, or with a value no run has): the run's
        options are unknown, and a default would start another run in its folder."""
        config = self.path / "config.json"
        try:
            recorded = loads(config.read_text())
        except (OSError, ValueError) as e:
            recorded = "missing" if isinstance(e, FileNotFoundError) else "not readable as JSON"
        run_options = {n for n, (_, f) in flat_fields().items() if f.metadata.get("resume") != RUNTIME}
        lacking = sorted(run_options - set(given) - set(recorded)) if isinstance(recorded, dict) else []
        problem = (f"is {recorded}" if isinstance(recorded, str) else "is not a JSON object"
                   if not isinstance(recorded, dict) else f"lacks {', '.join(lacking[:4])}" if lacking else None)
        old, new = (flat(from_flat(recorded)) if problem is None else {}), flat(cfg)
        try:
            merged = from_flat({**new, **{n: old[n] for n in run_options - set(given)}}).resolved() \
                if problem is None else None
        except (UsageError, ValueError, KeyError, TypeError, OverflowError) as e:
            problem = f"records a value no run has ({message(e)})"
        if problem:
            raise UsageError(f"--resume: {self.path} holds a run stopped before its first checkpoint, and its "
                             f"config.json {problem}: the run's options are unknown; nothing was written: train "
                             f"into another --out (or empty {self.path} and train there)")
        changed = [f"{n} {new[n]!r} (was {old[n]!r})" for n in sorted(run_options & set(given)) if new[n] != old[n]]
        return merged, ("with the options its config.json records" + (f", changed: {', '.join(changed)}" if changed else ""))

    def check_identity(self, saved: dict) -> None:
        """CheckpointError when last.pt is not the run this folder's config.json records (a last.pt copied in
        from another run: resuming it would mix two runs' records, pictures and best.pt). Fields a resume may
        change (options.CHANGEABLE) and runtime ones are not compared; a missing or unreadable config.json
        (written again at the start) is no evidence either way."""
        config = self.path / "config.json"
        try:
            recorded = loads(config.read_text())
        except (OSError, ValueError) as e:
            recorded = "missing" if isinstance(e, FileNotFoundError) else "not readable as JSON"
        if not isinstance(recorded, dict):
            self.note(f"note: {config} is {recorded if isinstance(recorded, str) else 'not a JSON object'}; the run goes "
                      f"on from {self.last} and writes it again from that checkpoint")
            return
        theirs = flat(from_flat(saved))
        diff = differing(recorded, theirs, [n for n, (_, f) in flat_fields().items()
                                            if f.metadata.get("resume") in (RUNTIME, CHANGEABLE)])
        if diff:
            shown = ", ".join(f"{k} {theirs[k]!r} where config.json has {recorded[k]!r}" for k in diff[:3])
            raise checkpoint.CheckpointError(
                f"{self.last} is not the run {self.path / 'config.json'} records ({shown}): a checkpoint copied in "
                f"from another run? Nothing was changed; resume that run in its own folder, or train into another --out")

    def start(self, cfg: Config, step: int) -> None:
        """Create the folder, write config.json (a new run's; a resume's changes are written with its first
        checkpoint, so a resume that fails before one leaves config.json as last.pt's), and drop records
        written after `step` (the step resumed from: they will be written again)."""
        if not self.writes:
            return
        samples = self.path / "samples"
        if samples.exists() and not samples.is_dir():
            raise UsageError(f"{samples} is a file where the run keeps its pictures (a folder); nothing was written: "
                             f"move it away, or train into another --out")
        self._made = [p for p in (self.path / "config.json", samples) if not os.path.lexists(p)]   # undone by close
        try:                                                        # if the run fails before its first record
            samples.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise OSError(f"cannot write the run folder {self.path}: {e.strerror or e}") from e
        remove_stale_temporaries(self.path, inputs=(self.last, self.best, self.metrics, self.path / "config.json"))
        if self.metrics.exists():
            records = self.records()
            if said := self.not_records(records):
                self.note(f"{said}; the log is rewritten without them")
            keep = [r for r in records if r["step"] <= step]
            atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in keep))
        if step == 0 or not (self.path / "config.json").exists():   # a resume's changes: with its checkpoint
            atomic_write_text(self.path / "config.json", json.dumps(flat(cfg), indent=2))

    # -- outputs ------------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if self.writes:
            append_jsonl(self.metrics, record)
            if self.events is not None:
                for tag, value in scalars(record):
                    self.events.add_scalar(tag, value, record["step"])
                if record["split"] == "val":
                    self.events.flush()

    def tensorboard(self, step: int = 0) -> None:
        """Write the records and pictures as TensorBoard events too, into <run>/tensorboard/ (--tensorboard);
        a run resumed at `step` purges the events after it, written before a kill (their steps came twice)."""
        if not self.writes:
            return
        try:
            # optional: the [tensorboard] extra; torch's writer imports the tensorboard package
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError('--tensorboard needs the tensorboard package: pip install tensorboard (or pip install -e '
                             '".[tensorboard]")') from None
        self.events = SummaryWriter(str(self.path / "tensorboard"), flush_secs=30, purge_step=step + 1 if step else None)

    def close(self) -> None:
        """Flush and close the TensorBoard events; when the run holds no record or checkpoint (it failed before
        its first step), remove the config.json and empty samples/ this start made (in a folder that existed
        too: it was refused afterwards as holding a run) and the folder if this run created it, so the same
        command can run again; release the folder's lock."""
        if self.events is not None:
            self.events.close()
            self.events = None
        if getattr(self, "_lock_fd", None) is not None:
            try:
                if not any((self.path / n).exists() for n in ("last.pt", "best.pt", "metrics.jsonl")):
                    for made in getattr(self, "_made", ()):         # a start refused: no run to resume
                        if made.is_dir() and not made.is_symlink():
                            if not any(made.iterdir()):
                                made.rmdir()
                        else:
                            made.unlink(missing_ok=True)
                if getattr(self, "_created", False) and not any(self.path.iterdir()):
                    self.path.rmdir()
            except OSError:
                pass                                                # kept: nothing is lost either way
        self.unlock()

    def records(self, split: str | None = None) -> list[dict]:
        """The metrics records (those with a step >= 0, a split and finite numbers, as a run writes them: a run
        stops before it logs a NaN; anything else in the file is skipped), of `split` or all."""
        return [r for r in read_jsonl(self.metrics) if type(r.get("step")) is int and r["step"] >= 0
                and r.get("split") in ("train", "val") and (split is None or r["split"] == split) and finite(r)]

    def not_records(self, records: list) -> str | None:
        """A note when metrics.jsonl holds lines that are not among `records` (its records()): a torn last
        line, or edits; said by whatever reads the log, not hidden."""
        lines = sum(1 for ln in self.metrics.read_bytes().splitlines() if ln.strip()) if self.metrics.exists() else 0
        return (f"note: {self.metrics}: {lines - len(records)} of its {lines} lines are not records ({RECORD})"
                if lines > len(records) else None)

    def curves(self, final: bool = True) -> None:
        """curves.png from metrics.jsonl (figures.curves), rewritten atomically: always when `final`, else at
        most once per CURVES_EVERY_S seconds (a matplotlib redraw takes about a second on a small CPU)."""
        if self.writes and (final or time.monotonic() - self._curves_drawn >= CURVES_EVERY_S):
            data = figures.png(figures.curves({self.path.name: self.records()}))
            atomic_write_bytes(self.path / "curves.png", lambda f: f.write(data))
            self._curves_drawn = time.monotonic()

    def picture(self, step: int, image) -> None:
        """samples/stepNNNNNNN.png, a PIL image, written atomically (and as a TensorBoard image)."""
        if self.writes:
            if self.events is not None:
                self.events.add_image("val/samples", np.asarray(image.convert("RGB")), step, dataformats="HWC")
            data = figures.png(image)
            atomic_write_bytes(self.path / "samples" / f"step{step:07d}.png", lambda f: f.write(data))

    def save(self, state: dict, best: bool = False) -> None:
        if not self.writes:
            return
        path = self.best if best else self.last
        try:
            checkpoint.save(path, state)
        except OSError as e:                                       # disk full, folder gone or read-only
            raise OSError(f"could not write {path} ({e.strerror or e}); the previous {path.name}, if any, is "
                          f"intact (checkpoints are written to a temporary file and renamed)") from e
        if not best:                                                # config.json says what last.pt continues
            config = self.path / "config.json"
            try:
                atomic_write_text(config, json.dumps(state["config"], indent=2))
            except OSError as e:
                raise OSError(f"could not write {config} ({e.strerror or e}); {path} holds step {state.get('step')} "
                              f"and the previous {config.name}, if any, is intact") from e

    def note(self, message: str) -> None:
        if self.writes:
            print(message, file=sys.stderr)
