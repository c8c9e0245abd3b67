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
import sys
from pathlib import Path

from . import checkpoint
from .config import Config, merge_for_resume
from .fileio import append_jsonl, atomic_write_text, read_jsonl


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
            saved = checkpoint.load(self.last)
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
        (self.path / "samples").mkdir(parents=True, exist_ok=True)
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

    def picture(self, step: int, columns) -> None:
        if self.writes:
            from .visualize import save_grid
            save_grid(self.path / "samples" / f"step{step:07d}.png", columns)

    def save(self, state: dict, best: bool = False) -> None:
        if self.writes:
            checkpoint.save(self.best if best else self.last, state)

    def note(self, message: str) -> None:
        if self.writes:
            print(message, file=sys.stderr)
