"""The cache folder of generated and converted data: `$CYCLESEG_CACHE`, default `~/.cache/cycleseg`."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("CYCLESEG_CACHE", Path.home() / ".cache" / "cycleseg"))
