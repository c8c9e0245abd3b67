"""The folder of one run, and the one place that writes into it:

    config.json      the resolved config
    metrics.jsonl    one JSON line per log step and per evaluation
    samples/         stepNNNNNNN.png pictures of validation images
    last.pt          everything needed to resume exactly; best.pt: the best validation mIoU so far

The resume policy lives here too: a folder that holds a run is never overwritten; `--resume` continues
from last.pt with the checkpoint's config (runtime fields such as --device excepted). Every file is
written atomically. Off rank 0 (distributed runs) every write is a no-op: only rank 0 owns the folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from . import checkpoint
from .config import Config, merge_for_resume
from .fileio import append_jsonl, atomic_write_text, read_jsonl, remove_stale_temporaries


class RunFolder:
    def __init__(self, path, rank: int = 0):
        self.path, self.rank = Path(path), rank
        self.writes = rank == 0
        self.last, self.best = self.path / "last.pt", self.path / "best.pt"
        self.metrics = self.path / "metrics.jsonl"

    # -- the resume policy --------------------------------------------------------------------------
    def open(self, cfg: Config) -> tuple[Config, dict | None]:
        """(config to run with, checkpoint state to resume from or None). Refuses to overwrite a run."""
        if cfg.resume and self.last.exists():
            saved = checkpoint.load_run(self.last)
            cfg, diff = merge_for_resume(saved["config"], cfg)
            if diff:
                self.note(f"resuming {self.last}: keeping the checkpoint's {', '.join(diff)}")
            return cfg, saved
        if cfg.resume:
            self.note(f"--resume: no checkpoint at {self.last}, starting a new run")
        elif self.last.exists():
            raise FileExistsError(f"{self.path} already holds a run (last.pt); pass --resume to continue it "
                                  f"or --out to start another")
        return cfg, None

    def start(self, cfg: Config, step: int) -> None:
        """Create the folder, write config.json, and drop records written after `step` (the step resumed
        from: they will be written again)."""
        if not self.writes:
            return
        try:
            (self.path / "samples").mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise OSError(f"cannot write the run folder {self.path}: {e.strerror or e}") from e
        remove_stale_temporaries(self.path)                          # left by a process killed mid-write
        if self.metrics.exists():
            keep = [r for r in read_jsonl(self.metrics) if r["step"] <= step]
            atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in keep))
        atomic_write_text(self.path / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))

    # -- outputs ------------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if self.writes:
            append_jsonl(self.metrics, record)

    def records(self, split: str | None = None) -> list[dict]:
        return [r for r in read_jsonl(self.metrics) if split is None or r["split"] == split]

    def picture(self, step: int, columns, titles=None) -> None:
        if self.writes:
            from .visualize import save_grid
            save_grid(self.path / "samples" / f"step{step:07d}.png", columns, titles)

    def save(self, state: dict, best: bool = False) -> None:
        if not self.writes:
            return
        path = self.best if best else self.last
        try:
            checkpoint.save(path, state)
        except OSError as e:                                       # disk full, folder gone or read-only
            raise OSError(f"could not write {path} ({e.strerror or e}); the previous {path.name}, if any, is "
                          f"intact (checkpoints are written to a temporary file and renamed)") from e

    def note(self, message: str) -> None:
        if self.writes:
            print(message, file=sys.stderr)
