"""python -m cycleseg.plot RUN [RUN ...] [--out curves.png]: the curves of one or several runs.

Each run folder's metrics.jsonl drawn as figures.curves draws it: a panel per loss term, the learning
rate and each validation score, by step, one line per run. A single run's curves are also in its folder
(curves.png, rewritten at each evaluation).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from . import figures
from .cli import refuse_existing
from .fileio import atomic_write_bytes
from .runfolder import RunFolder
from .usage import Parser, UsageError, fail, first_repeat, path_arg, run_command


def run(a) -> Path:
    runs, names = {}, {}
    a.runs = [f.parent if f.name == "metrics.jsonl" and f.is_file() else f for f in a.runs]   # a run's records: its run
    twice = first_repeat(a.runs, key=lambda folder: folder.resolve())
    if twice is not None:
        raise UsageError(f"{twice} is given twice; give each run once")
    for folder in a.runs:
        if folder.is_file():
            raise UsageError(f"{folder} is a file; plot takes run folders (those holding a metrics.jsonl)")
        if not (folder / "metrics.jsonl").exists():
            raise UsageError(f"{folder}: no metrics.jsonl (not a run folder)")
        records = folder / "metrics.jsonl"
        if not records.is_file() and not records.is_dir():          # a FIFO would block the command for good
            raise UsageError(f"{records} is a special file (a FIFO, a device), not a run's records")
        names[folder] = folder.name if folder.name not in runs else str(folder)
        run = RunFolder(folder)
        runs[names[folder]] = run.records()
        if said := run.not_records(runs[names[folder]]):
            print(f"{said} and are not drawn", file=sys.stderr)
    drawn = {run for panel in figures.curve_points(runs).values() for run, line in panel.items()
             if any(math.isfinite(v) for _, v in line)}
    for folder, name in names.items():
        if name not in drawn:
            why = (f"{folder / 'metrics.jsonl'}: no finite number to draw ({len(runs[name])} records, none with a "
                   f"loss or score that is a finite float32 number)")
            if not drawn:
                raise UsageError(f"{why}; nothing was written")
            print(f"note: {why}; drawn without it", file=sys.stderr)
    out = a.out or (a.runs[0] / "curves.png" if len(a.runs) == 1 else Path("curves.png"))
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: the plot is a PNG; name a .png file")
    own = len(a.runs) == 1 and out.resolve() == (a.runs[0] / "curves.png").resolve()   # the run's figure, redrawn
    refuse_existing([out], a.overwrite or own, "an earlier plot, or another file of that name",
                    inputs=[folder / "metrics.jsonl" for folder in a.runs])
    data = figures.png(figures.curves(runs))
    atomic_write_bytes(out, lambda f: f.write(data))
    return out


def main(argv=None) -> int:
    p = Parser(prog="python -m cycleseg.plot", description=__doc__)
    p.add_argument("runs", type=path_arg, nargs="+", help="run folders (or their metrics.jsonl)")
    p.add_argument("--out", type=path_arg, default=None, help="the PNG (default: curves.png in the run, or here)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    try:
        out = run(p.parse_args(argv))
    except (UsageError, OSError) as e:
        return fail(e)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
