"""Checkpoints: torch.save'd dicts written atomically (fileio), so a run killed at any moment leaves
either the previous checkpoint or the new one.

A run's checkpoint holds: step, best_miou, config (the resolved Config as a dict), plan, data (what
the networks were built for: classes, channels, names, palette, size), nets, optimizers, schedulers,
pools, streams and RNG states, and the clock (the run's time so far). `load_run` checks that a file is
one before anything uses it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pickle
import re
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import torch

from .fileio import atomic_write_bytes
from .usage import UsageError
from .config import check_image_side, from_flat
from .data.cache import cache_dir
from .data.h5format import info_problem
from .models import networks_from_config


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the file and what is wrong with it."""


def save(path, state: dict) -> None:
    try:
        atomic_write_bytes(path, lambda f: torch.save(state, f))
    except RuntimeError as e:                       # torch.save reports a failed write (a full disk) this way
        raise OSError(f"the write failed: {str(e).splitlines()[0].strip()}; is the disk full?") from e


def load(path, map_location="cpu") -> dict:
    """A checkpoint's contents, loaded with weights_only=True: tensors, numbers, strings and containers
    only, so a file from elsewhere cannot run code when opened (ours hold nothing else: the config as a
    dict, RNG states as tensors or tuples of ints)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not path.is_file():                                         # a FIFO or a device would block or never end
        raise CheckpointError(f"{path}: not a regular file (a pipe, a device or a folder); name a checkpoint file")
    damaged = damaged_entry(path)
    if damaged:
        raise CheckpointError(f"{path}: damaged: the bytes of its entry {damaged} do not match the checksum written with "
                              f"them (a disk or copy error, or an edit); use another checkpoint (best.pt, a copy) or "
                              f"train again")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e) and "GLOBAL" not in str(e):
            raise CheckpointError(f"{path}: could not be read as a checkpoint: the file is corrupt, truncated or not "
                                  f"a torch checkpoint ({torch_reason(e)})") from e
        raise CheckpointError(f"{path}: refused: it holds Python objects other than tensors, numbers, strings and "
                              f"containers, which could run code when loaded; cycleseg checkpoints never do "
                              f"({torch_reason(e)})") from e
    except Exception as e:
        raise CheckpointError(f"{path}: could not be read as a checkpoint: the file is corrupt, truncated or not a "
                              f"torch checkpoint ({torch_reason(e)})") from e


def damaged_entry(path) -> str | None:
    """The first entry of a checkpoint (a zip archive, as torch.save writes) whose bytes do not match their
    CRC-32, or None. torch.load does not compare them: a flipped byte inside a tensor loads as another
    weight without a word. A file that is not a readable zip is left to torch.load to report."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError):
        return None


def check_weights(state: dict, path) -> None:
    """CheckpointError when the networks' tensors are not those the run saved (weights_digest): called once
    they are loaded (networks_from_checkpoint, a resume), after the checks that say more."""
    saved = state.get("weights_digest")
    if saved is not None and saved != weights_digest(state["nets"]):
        _fail(path, "its weights are not those its run saved (the checkpoint was edited by hand); use another "
                    "checkpoint (best.pt, a copy) or train again")


def check_moments(state: dict, path) -> None:
    """CheckpointError when the optimizers' tensors (Adam's moments) are not those the run saved
    (moments_digest): called by a resume, the one reader that trains on from them."""
    saved = state.get("moments_digest")
    if saved is not None and saved != tensors_digest(state["optimizers"]):
        _fail(path, "its optimizer state (Adam's moments) is not what its run saved (the checkpoint was edited by "
                    "hand); a resume would not go on as the run would have: resume from another checkpoint or "
                    "train again into another --out")


DIGESTS = ("weights_digest", "digest")                              # every reader's; a resume's also moments_digest


def check_digest(state: dict, path, resume: bool = False) -> None:
    """CheckpointError when a run state's values are not those its run saved (digest): called after the
    checks that say more (check_run, the networks' load, check_weights). A checkpoint without one of its
    digests (written before they were, or with them deleted) is read with a note that it cannot be checked."""
    if "digest" in state and state["digest"] != digest(state):
        _fail(path, "its run state is not what its run wrote (the digest it was saved with differs: a value was "
                    "edited by hand); use another checkpoint (best.pt, a copy) or train again into another --out")
    missing = [k for k in DIGESTS + (("moments_digest",) if resume else ()) if k not in state]
    if missing:
        print(f"note: {path} carries no {' or '.join(missing)} (written by an older cycleseg, or edited): what it "
              f"holds cannot be checked against what its run saved", file=sys.stderr)


def digest(s: dict) -> str:
    """SHA-256 of a checkpoint's run state, everything but the values of tensors of more than 16 elements
    (weights and optimizer moments: checked for NaN and shape elsewhere; hashing them would cost a second per
    save): its step, config, positions, schedules, optimizer settings and counts, plan and clock. Saved in
    the checkpoint ("digest"), checked by every command that reads a run (check_digest), so an edit that
    leaves every value possible (a stream position, a plan flag, a mode, a palette) is not resumed, scored or
    exported as if the run had written it."""
    h = hashlib.sha256()

    def walk(v):
        if isinstance(v, dict):
            h.update(b"{")
            for k in sorted(v, key=repr):
                if k != "digest" or v is not s:
                    h.update(repr(k).encode() + b":")
                    walk(v[k])
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[" if isinstance(v, list) else b"(")
            for x in v:
                walk(x)
            h.update(b"]")
        elif isinstance(v, torch.Tensor):
            h.update(f"T{v.dtype}{tuple(v.shape)}".encode())
            if v.numel() <= 16:
                h.update(repr(v.detach().cpu().tolist()).encode())
        else:
            h.update(f"{type(v).__name__}:{v!r};".encode())
    walk(s)
    return h.hexdigest()


def tensors_digest(tree) -> str:
    """SHA-256 of every tensor in a nested state (an optimizer's state dicts: names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()

    def walk(v, where):
        if isinstance(v, dict):
            for k in sorted(v, key=repr):
                walk(v[k], f"{where}.{k}")
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{where}[{i}]")
        elif isinstance(v, torch.Tensor):
            t = v.detach()
            h.update(f"{where}:{t.dtype}{tuple(t.shape)};".encode())
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    walk(tree, "")
    return h.hexdigest()


def weights_digest(nets: dict) -> str:
    """SHA-256 of the networks' tensors (names, dtypes, shapes and bytes): saved in every checkpoint
    ("weights_digest") and checked once the networks are loaded (check_weights), so weights edited by hand (a
    CRC-valid archive rewritten) are refused by every command instead of evaluated, exported or trained on."""
    h = hashlib.sha256()
    for name in sorted(nets):
        for key in sorted(nets[name]):
            t = nets[name][key].detach()
            h.update(f"{name}.{key}:{t.dtype}{tuple(t.shape)};".encode())
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def torch_reason(e: Exception) -> str:
    """What torch.load found wrong, in its first sentence, without the advice around it (loading with
    weights_only=False, which would run a file's code; filing a report to PyTorch)."""
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation")
    kept = [t.strip() for t in re.split(r"\n\s*\n", str(e)) if t.strip() and not t.strip().startswith(advice)]
    first = kept[0].splitlines()[0] if kept else type(e).__name__
    first = re.split(r"\.\s|\s+\(Could this error", first + " ")[0].strip().rstrip(".")
    return first or type(e).__name__


EXPORTED = {".onnx": "an exported ONNX model", ".pt2": "an exported torch.export program"}


def load_run(path, map_location="cpu") -> dict:
    """A cycleseg run checkpoint (last.pt / best.pt), checked for the parts every reader needs: a
    hand-edited or foreign file is a CheckpointError saying what is wrong, never a traceback later."""
    try:
        state = load(path, map_location)
    except CheckpointError:
        kind = EXPORTED.get(Path(path).suffix.lower())
        if kind is None:
            raise                                                   # was "corrupt, truncated or not a checkpoint":
        raise CheckpointError(f"{path}: {kind} (python -m cycleseg.export), not a run's checkpoint; give the run's "
                              f"last.pt or best.pt (python -m cycleseg.predict runs an exported .onnx)") from None
    if not isinstance(state, dict) or not {"config", "nets"} <= set(state):
        found = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a cycleseg checkpoint (expected 'config' and 'nets', found {found})")
    check_run(state, path)
    return state


def _fail(path, what: str):
    raise CheckpointError(f"{path}: not a usable cycleseg checkpoint: {what}")


def check_run(state: dict, path) -> None:
    """CheckpointError unless `state` has the shape of a run checkpoint and a valid config."""
    nets, cfg = state["nets"], state["config"]
    if not isinstance(nets, dict) or not nets or not all(isinstance(v, dict) for v in nets.values()):
        _fail(path, f"'nets' must map network names to state dicts, got {type(nets).__name__}")
    if "G_IS" not in nets:
        _fail(path, f"no G_IS among its networks {sorted(map(str, nets))}")
    for name, sd in nets.items():
        if not sd or not all(isinstance(k, str) for k in sd):
            _fail(path, f"the state dict of {name} must map parameter names to tensors, got keys {list(sd)[:3]!r:.80}")
        odd = next((k for k, v in sd.items() if not isinstance(v, torch.Tensor) or v.layout != torch.strided
                    or v.is_complex() or v.is_quantized), None)
        if odd is not None:
            v = sd[odd]
            kind = (f"a {v.layout} {v.dtype} tensor" if isinstance(v, torch.Tensor) else f"a {type(v).__name__}")
            _fail(path, f"the state dict of {name} must hold dense real tensors; {odd} is {kind:.80}")
        broken = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if broken:
            _fail(path, f"the weights of {name} hold NaN or infinite values ({broken[0]}"
                        f"{f' and {len(broken) - 1} more' if len(broken) > 1 else ''}): its run diverged before this "
                        f"was saved; use an earlier checkpoint or train again")
    if not isinstance(cfg, dict):
        _fail(path, f"'config' must be a dict, got {type(cfg).__name__}")
    step = state.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        _fail(path, f"'step' must be a whole number >= 0, got {step!r}")
    data = state.get("data", {})
    if not isinstance(data, dict):
        _fail(path, f"'data' must be a dict, got {type(data).__name__}")
    problem = info_problem(data)
    if problem:
        _fail(path, f"its data's description: {problem}")
    prints = data.get("fingerprints", {})
    if not isinstance(prints, dict) or not all(isinstance(v, str) for v in prints.values()):
        _fail(path, f"its data's fingerprints must map splits to digests, got {prints!r}"[:200])
    try:
        config = dataclasses.replace(from_flat(cfg), device="cpu", resume=False, out=str(Path(path).parent))
        resolved = config.resolved()
        if step > resolved.steps:
            _fail(path, f"'step' {step} is beyond its config's --steps {resolved.steps}: no run gets there (an edited "
                        f"checkpoint)")
        for side in (data.get("height"), data.get("width")):
            if side is not None:
                check_image_side(side, resolved.mode, f"its data's image size {side}", resolved.generator)
    except CheckpointError:
        raise
    except (UsageError, TypeError, ValueError) as e:
        _fail(path, f"its config is not valid ({e})")


def check_fingerprints(s: dict, now: dict, paths: dict, path, splits=("train", "val")) -> None:
    """CheckpointError when a split the checkpoint's run read has other content now (another folder of
    the same name, a file converted again): its scores would no longer mean what they meant, and a resumed
    run would train on other images. Checkpoints from before fingerprints were recorded pass."""
    saved = s.get("data", {}).get("fingerprints") or {}
    for split in splits:
        if split in saved and split in now and saved[split] != now[split]:
            cached = Path(paths[split]).resolve().is_relative_to(cache_dir().resolve())
            how = (f"a file of cycleseg's data cache was changed: delete {Path(paths[split]).parent} and it is made "
                   f"again from its source" if cached else
                   "resume or evaluate it on the data it was trained on, or start a new run on this data")
            raise CheckpointError(f"{path}: its run read other {split} data than {paths[split]} holds now "
                                  f"(content fingerprint {saved[split]}, now {now[split]}); {how}")


def networks_from_checkpoint(state: dict, path="checkpoint") -> tuple:
    """(config, data info, networks with the checkpoint's weights, on the CPU) of a run checkpoint."""
    cfg = from_flat(state["config"])
    g_is = state["nets"]["G_IS"]
    info = dict(state.get("data") or {})
    if "num_classes" not in info:                                   # older checkpoints: read the weights
        last = _last_conv(g_is)
        if last is None or "model.1.weight" not in g_is or last.dim() != 4 or g_is["model.1.weight"].dim() != 4:
            raise CheckpointError(f"{path}: its G_IS weights are not those of a cycleseg generator (no model.N "
                                  f"convolution weights), and it does not say its classes and channels")
        info["num_classes"], info["channels"] = last.shape[0], g_is["model.1.weight"].shape[1]
    info.setdefault("class_names", [str(i) for i in range(info["num_classes"])])
    info.setdefault("palette", None)
    info.setdefault("ignore_index", 255)
    meta = SimpleNamespace(channels=info["channels"], num_classes=info["num_classes"])
    try:
        nets = networks_from_config(cfg, meta, tuple(state["nets"]))
        for name, net in nets.items():
            net.load_state_dict(state["nets"][name])
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: its networks do not match its own config ({cfg.generator} G_IS, ngf "
                              f"{cfg.ngf}, {cfg.n_blocks} blocks, ndf {cfg.ndf}, {info['num_classes']} classes): "
                              f"{e}") from e
    check_weights(state, path)
    check_digest(state, path)
    return cfg, info, nets


def _last_conv(g_state: dict):
    """The weight of a generator's last convolution in its state dict (None: no model.N weights)."""
    layers = {int(m.group(1)): k for k in g_state if (m := re.fullmatch(r"model\.(\d+)\.weight", k))}
    return g_state[layers[max(layers)]] if layers else None
