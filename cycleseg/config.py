"""The one config of a run. Only the entry point (train.py) and assemble.py read all of it.

Every option is a field made by options.option, its help, check, choices and resume rule beside it; each
method's options are a dataclass beside its step (cycleseg/methods/<method>.py), embedded here under the
method's name (cfg.meanteacher.consistency is --mt-consistency). Fields left as None are filled by the
preset: "paper" (the paper's networks; the default on a GPU) or "cpu" (a small model that trains in
minutes on a laptop CPU; the default without a GPU), or by the recipe. Checkpoints and config.json hold
the flat form (`flat`: one key per flag, as every version wrote it).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import os
from dataclasses import dataclass, fields

import torch

from .data.augment import POLICIES
from .fastpath import PRECISIONS
from .methods import METHODS, MODES
from .methods.adversarial import AdversarialOptions
from .methods.cyclegan import CycleGANOptions
from .methods.fixmatch import FixMatchOptions
from .methods.meanteacher import MeanTeacherOptions
from .models import GENERATORS
from .options import CHANGEABLE, RUNTIME, check_fields, flag, option
from .report import percent
from .usage import Parser, UsageError, long_name

PRESETS = {
    "paper": dict(ngf=64, n_blocks=9, ndf=64, image_size=128, batch_size=5, steps=20000, lr=2e-4,
                  eval_every=1000, ckpt_every=1000),
    # Small and short: a higher learning rate and batch 8 make the most of ~1000 steps on two cores.
    "cpu": dict(ngf=16, n_blocks=3, ndf=32, image_size=64, batch_size=8, steps=1000, lr=1e-3,
                eval_every=250, ckpt_every=250),
}
# The objective's weights and schedule. "2019": the original code's (the paper's equations with its
# weights, beta1 0.9 for the supervised baselines). "tuned": found by experiment on ACDC (README, "Making
# the method win on ACDC"): the same optimizer for every arm of a comparison, no L_cycle^I (its gradient
# through G_SI fought the cross-entropy), and L_disc^S at 0.01 instead of 0.5.
RECIPES = {
    "2019": dict(lambda1=1.0, lambda2=0.05, lambda3=1.0, lambda4=0.5, lambda5=0.5, rampup=0.0, lr_d_scale=1.0,
                 beta1_semi=0.5, beta1_supervised=0.9, dice=0.0, hard_cycle=False),
    "tuned": dict(lambda1=1.0, lambda2=0.05, lambda3=0.0, lambda4=0.01, lambda5=0.5, rampup=0.0, lr_d_scale=1.0,
                  beta1_semi=0.9, beta1_supervised=0.9, dice=0.0, hard_cycle=False),
}
# The tuned recipe's weights that depend on G_IS: with SSL4MIS's UNet, L_disc^S at 0.1 (re-found on ACDC: at
# 0.01 the method only ties the supervised UNet; at 0.1 it leads in every seed at 10 % and 20 %,
# benchmarks/experiments/acdc-unet.md, "The CycleGAN weights re-found").
TUNED_FOR_GENERATOR = {"resnet": {}, "unet": dict(lambda4=0.1)}
SIDE_MULTIPLE = {"resnet": 4, "unet": 16}   # image sides a G_IS reads: multiples of this (its halvings)
OPTIMIZERS = ("adam", "sgd")
AUGMENTS = POLICIES                 # data/augment.py
# SSL4MIS's learning rate for its SGD (the presets' lr is Adam's)
SGD_LR = 0.01
# Why a resumed run keeps a field (options.option's `resume`; the method's options: options.METHOD).
NETWORKS = "the networks' shapes (the checkpoint's weights)"
DATA = "the data and its streams (positions in them are checkpointed)"
SEED = "the seed (the run's identity)"
PLAN = "the plan it started with (numerics)"
MAX_SIDE = 4096                     # larger images: 16+ GB a batch, and a checkpoint typo could ask for petabytes


@dataclass
class Config:
    # what to train
    mode: str = option("semi", "; ".join(f"{m.mode}: {m.summary}" for m in METHODS.values()), choices=MODES)
    data: str | None = option(None, "train .h5, a folder with train.h5 + val.h5, an SSL4MIS ACDC folder, \"shapes\"; "
                              "None = the phantoms", resume=DATA)
    val_data: str | None = option(None, "val split .h5 (default: val.h5 beside the train split)", resume=DATA)
    labeled_fraction: float = option(0.1, "nested subsets fixed by the seed", resume=DATA)
    seed: int = option(0, "seeds the networks' init, the labeled subset, the streams and the pools", resume=SEED)
    preset: str = option("auto", "sizes and schedule: paper (the paper's networks) or cpu (small); auto = paper on a "
                         "GPU, cpu otherwise", choices=("auto",) + tuple(PRESETS), resume=NETWORKS)
    # networks (None: from the preset)
    generator: str = option("resnet", "G_IS: resnet (the paper's CycleGAN generator) or unet (SSL4MIS's 2D UNet, the "
                            "field's baseline network); G_SI and the discriminators are the paper's either way",
                            choices=GENERATORS, resume=NETWORKS)
    ngf: int | None = option(None, "generator width (channels of the first conv; paper 64)",
                             check="width", resume=NETWORKS)
    n_blocks: int | None = option(None, "residual blocks per generator (paper 9)",
                                  check="blocks", resume=NETWORKS)
    ndf: int | None = option(None, "discriminator width (paper 64)", check="width", resume=NETWORKS)
    disc_norm: str = option("instance", "the discriminators' norm: instance (the 2019 code), batch (the paper's "
                            "text) or none", choices=("instance", "batch", "none"), resume=NETWORKS)
    dropout: float = option(0.0, "the paper used none; the 2019 code used 0.5", check="below_one", resume=NETWORKS)
    # optimisation
    steps: int | None = option(None, "training steps (one G update and, in semi, one D update each)",
                               check="steps", resume=CHANGEABLE)
    batch_size: int | None = option(None, "labeled images per step, and as many unlabeled",
                                    check="batch", resume=DATA)
    image_size: int | None = option(None, "size of the built-in dataset and of ACDC read from its folder (a "
                                    "converted .h5 keeps the size it was converted at)", resume=DATA)
    lr: float | None = option(None, "G_IS's learning rate (Adam: the preset's, paper 2e-4; --optimizer sgd: 0.01, "
                              "SSL4MIS's)", check="rate", resume=CHANGEABLE)
    optimizer: str = option("adam", "G_IS's optimizer: adam (constant for a quarter of the run, then linear to 0) or "
                            "sgd (SSL4MIS's: momentum 0.9, weight decay 1e-4, poly decay (1 - t/T)^0.9); the other "
                            "networks keep Adam at --lr-d", choices=OPTIMIZERS)
    recipe: str = option("tuned", "the objective's weights and schedule: tuned (found on ACDC; with --generator unet "
                         "lambda4 0.1) or 2019 (the original code's); the options below override it",
                         choices=tuple(RECIPES))
    beta1: float | None = option(None, "Adam beta1 (recipe tuned: 0.9 for every mode; 2019: 0.5 semi, 0.9 the "
                                 "supervised baselines)", check="below_one")
    lr_d: float | None = option(None, "the discriminators' learning rate, and G_SI's under --optimizer sgd (default: "
                                "the recipe's share of --lr; of the preset's Adam rate under sgd)",
                                check="rate", resume=CHANGEABLE)
    dice: float | None = option(None, "weight of a soft Dice loss added to the supervised cross-entropy (every mode "
                                "alike); 0 = none", check="weight")
    # each method's options, beside its step (cycleseg/methods/<method>.py); flags prefixed as each says
    semi: CycleGANOptions = option(default_factory=CycleGANOptions)
    adversarial: AdversarialOptions = option(default_factory=AdversarialOptions)
    meanteacher: MeanTeacherOptions = option(default_factory=MeanTeacherOptions)
    fixmatch: FixMatchOptions = option(default_factory=FixMatchOptions)
    # data
    flip: bool = option(False, "random horizontal flips (off by default, as in the paper)", resume=DATA)
    rotate: bool = option(False, "random rotations by multiples of 90 degrees (with --flip: the usual ACDC "
                          "augmentation)", resume=DATA)
    scale_crop: float = option(1.0, "> 1: random crops of 1/s of each side, s in [1, scale_crop], resized back",
                               check="crop_scale", resume=DATA)
    augment: str = option("none", "ssl4mis: SSL4MIS's RandomGenerator on every stream (a random rot90 + flip, or a "
                          "rotation in [-20, 20] degrees, nearest), instead of --flip / --rotate / --scale-crop",
                          choices=AUGMENTS, resume=DATA)
    prefetch: int = option(3, "batches prepared ahead of the step by the loader thread",
                           check="prefetch", resume=RUNTIME)
    # execution
    device: str = option("auto", "cpu, cuda, cuda:N; auto = cuda when there is a GPU", resume=RUNTIME)
    fast: bool = option(True, "the fast path (fused kernels, merged calls, and per device bf16, channels_last, "
                        "compile); --no-fast: PyTorch's own ops, eager fp32", resume=PLAN)
    compile: str = option("auto", "torch.compile the updates: auto = on a GPU when the run is long enough to win "
                          "back the compile time (never on the CPU, where it measured slower)",
                          choices=("auto", "on", "off"), resume=PLAN)
    precision: str = option("auto", "fast path arithmetic: bf16 autocast (fp32 weights) or fp32; auto = bf16 where "
                            "the device runs it natively", choices=PRECISIONS, resume=PLAN)
    # bookkeeping
    out: str | None = option(None, "run folder (default runs/<mode>-<pct>pct-seed<seed>)", resume=RUNTIME)
    resume: bool = option(False, "continue the run in --out from its last.pt, exactly where it stopped",
                          resume=RUNTIME)
    stop_after: int | None = option(None, "stop after this step as if interrupted (last.pt saved; --resume "
                                    "continues): runs in pieces (default: none, to --steps)",
                                    check="steps", resume=RUNTIME)
    log_every: int = option(10, "steps between training records in metrics.jsonl (each is a host sync)",
                            check="steps", resume=CHANGEABLE)
    eval_every: int | None = option(None, "steps between validations (metrics, a picture, best.pt)",
                                    check="steps", resume=CHANGEABLE)
    ckpt_every: int | None = option(None, "steps between last.pt checkpoints",
                                    check="steps", resume=CHANGEABLE)
    progress: bool = option(True, "a progress bar with losses, steps/s and ETA", resume=RUNTIME)
    tensorboard: bool = option(False, "also write the records and sample pictures as TensorBoard events in "
                               "<out>/tensorboard/ (pip install tensorboard)", resume=RUNTIME)


    def resolved(self) -> "Config":
        """A copy with the preset, device, betas and run folder filled in, checked."""
        c = copy.deepcopy(self)
        for name in ("out", "data", "val_data"):                   # '' would be the working folder, or no data
            if getattr(c, name) is not None and not isinstance(getattr(c, name), (str, os.PathLike)):
                raise UsageError(f"--{name.replace('_', '-')} {getattr(c, name)!r}: not a path")
            if getattr(c, name) is not None and not str(getattr(c, name)).strip():
                raise UsageError(f"--{name.replace('_', '-')} {getattr(c, name)!r}: an empty path (a shell variable left unset?)")
            if getattr(c, name) is not None and (problem := long_name(str(getattr(c, name)))):
                raise UsageError(f"--{name.replace('_', '-')}: {problem}")
        for name in ("data", "val_data"):                          # a path as typed would follow the working folder
            value = getattr(c, name)
            if value and os.path.exists(value):
                setattr(c, name, os.path.abspath(value))
        if c.device == "auto":
            c.device = "cuda" if torch.cuda.is_available() else "cpu"
        if c.preset == "auto":
            c.preset = "paper" if c.device.startswith("cuda") else "cpu"
        check_fields(c, names=("preset", "optimizer", "mode", "recipe"))   # what the defaults below depend on
        adam_lr = PRESETS[c.preset]["lr"]
        if c.lr is None and c.optimizer == "sgd":
            c.lr = SGD_LR
        for k, v in PRESETS[c.preset].items():
            if getattr(c, k) is None:
                setattr(c, k, v)
        if METHODS[c.mode].all_labels:
            c.labeled_fraction = 1.0
        if not 0.0 < c.labeled_fraction <= 1.0:
            raise UsageError(f"--labeled-fraction must be in (0, 1], got {c.labeled_fraction}")
        r = RECIPES[c.recipe] | (TUNED_FOR_GENERATOR.get(c.generator, {}) if c.recipe == "tuned" else {})
        for k in (f.name for f in fields(c.semi) if f.name in r):
            if getattr(c.semi, k) is None:
                setattr(c.semi, k, r[k])
        if c.dice is None:
            c.dice = r["dice"]
        if c.beta1 is None:
            c.beta1 = r["beta1_semi"] if c.mode == "semi" else r["beta1_supervised"]
        if c.lr_d is None:
            c.lr_d = (adam_lr if c.optimizer == "sgd" else c.lr) * r["lr_d_scale"]
        check_values(c)
        c.device = check_device(c.device)
        if c.out is None:
            c.out = f"runs/{c.mode}-{percent(c.labeled_fraction)}pct-seed{c.seed}"
        c.out = os.path.abspath(c.out)                              # config.json names the folder, wherever read
        return c

    def options(self, mode: str | None = None):
        """The options of `mode`'s method (default: this run's), or None if it has none."""
        method = METHODS[mode or self.mode]
        return getattr(self, method.mode) if method.options else None


def method_options() -> list[tuple[str, type]]:
    """(Config field, options class) of every method with options."""
    return [(m.mode, m.options) for m in METHODS.values() if m.options]


def prefix(options_class) -> str:
    return options_class.PREFIX + "_" if options_class.PREFIX else ""


@functools.lru_cache(maxsize=None)
def flat_fields() -> dict:
    """{flat name (a flag without its dashes, as a checkpoint writes it): (Config field or None, field)}, every
    option of the run: the Config's own, then each method's under its prefix (AdversarialOptions.lambda_:
    adv_lambda)."""
    out = {}
    for f in fields(Config):
        if dataclasses.is_dataclass(f.default_factory):          # a method's options
            for g in fields(f.default_factory):
                out[prefix(f.default_factory) + g.name.rstrip("_")] = (f.name, g)
        else:
            out[f.name] = (None, f)
    return out


def foreign_options(mode: str, given) -> list[str]:
    """The flags among `given` (flat names) that are another method's options: a run of `mode` ignores them
    (a grid passes its shared options to every cell; a single run should hear that they do nothing)."""
    return [f"--{name.replace('_', '-')}" for name in sorted(given or ())
            if flat_fields().get(name, (None,))[0] not in (None, mode)]


def unread_notes(cfg: "Config", given) -> list[str]:
    """A note for the options among `given` that a run of `cfg` (resolved) does not read: another method's,
    the networks' and optimizers' options its method has no use for, --labeled-fraction where the mode
    trains on every label, and the fast path's under --no-fast (said by the run and by its dry run)."""
    mode, notes = cfg.mode, []
    if foreign := foreign_options(mode, given):
        notes.append(f"note: {', '.join(foreign)}: {'options' if len(foreign) > 1 else 'an option'} of another "
                     f"method, not read by --mode {mode}")
    if unused := [f"--{n.replace('_', '-')}" for n in flat_fields() if n in unused_options(cfg) and n in (given or ())]:
        notes.append(f"note: {', '.join(unused)}: not read by --mode {mode} with --generator {cfg.generator} and "
                     f"--optimizer {cfg.optimizer} (no network or optimizer of this run uses "
                     f"{'them' if len(unused) > 1 else 'it'})")
    if "labeled_fraction" in (given or ()) and METHODS[mode].all_labels:
        notes.append(f"note: --labeled-fraction: not read by --mode {mode}, which trains on every label (1.0)")
    dropped = [f"--{n} {get(cfg, n)}" for n, off in (("precision", ("auto", "fp32")), ("compile", ("auto", "off")))
               if n in (given or ()) and get(cfg, n) not in off]
    if dropped and not cfg.fast:
        notes.append(f"note: {', '.join(dropped)}: not read with --no-fast (PyTorch's own ops, eager fp32)")
    return notes


def unused_options(cfg: "Config") -> list[str]:
    """The flat names of the shared network and optimizer options that no network or optimizer of a run of
    `cfg` (resolved) reads: the discriminators' without one, the ResNet generator's where G_IS is the UNet
    and there is no G_SI, --lr-d and --beta1 where every rate and beta is G_IS's own or a method's option."""
    nets = set(METHODS[cfg.mode].step.networks)
    resnet = cfg.generator == "resnet" or "G_SI" in nets
    adam_g = cfg.optimizer == "adam"                                # G_IS's optimizer reads --beta1
    reads = {"ndf": bool(nets & {"D_S", "D_I", "D_H"}), "disc_norm": bool(nets & {"D_S", "D_I"}),
             "ngf": resnet, "n_blocks": resnet, "dropout": resnet,
             "lr_d": "D_S" in nets or ("D_H" in nets and not adam_g),   # Hung's D under Adam: --adv-lr-d-scale of --lr
             "beta1": adam_g or "D_S" in nets}                      # Hung's D has --adv-beta1-d
    return [name for name, read in reads.items() if not read]


def runtime_names() -> tuple:
    """The flat names of the options that describe the process, not the run (options.RUNTIME)."""
    return tuple(name for name, (_, f) in flat_fields().items() if f.metadata.get("resume") == RUNTIME)


def differing(saved: dict, ours: dict, skip=()) -> list[str]:
    """The flat names, outside `skip`, whose values in `saved` (a checkpoint's or config.json's) differ from
    `ours`; names `saved` lacks (an older version's) are no difference."""
    return [k for k in ours if k in saved and k not in skip and saved[k] != ours[k]]


def get(c: Config, name: str):
    holder, f = flat_fields()[name]
    return getattr(getattr(c, holder) if holder else c, f.name)


def flat(c: Config) -> dict:
    """The config as one dict of flat names (checkpoints, config.json, the dry run)."""
    return {name: get(c, name) for name in flat_fields()}


def from_flat(values: dict) -> Config:
    """A Config from flat names (a command line's, or a checkpoint's or config.json's flat dict); names this
    version does not have (any more) are dropped, missing ones (options newer than the checkpoint) take defaults."""
    table = flat_fields()
    c = Config()
    for name, value in values.items():
        if name in table:
            holder, f = table[name]
            setattr(getattr(c, holder) if holder else c, f.name, value)
    return c


def check_values(c: Config) -> None:
    """UsageError naming the first option of a resolved config whose value cannot be used: each field's own
    check and choices (options.option), then the rules across fields."""
    check_fields(c)
    for holder, options in method_options():
        check_fields(getattr(c, holder), prefix(options))
    if c.augment != "none" and (c.flip or c.rotate or c.scale_crop != 1.0):
        raise UsageError(f"--augment {c.augment} is a whole augmentation of its own: drop --flip, --rotate and "
                         f"--scale-crop")
    if not 0 <= c.seed < 2 ** 32:
        raise UsageError(f"--seed must be in 0 .. 2**32 - 1, got {c.seed}")
    check_image_side(c.image_size, c.mode, f"--image-size {c.image_size}", c.generator)


class ResumeError(UsageError):
    """A resumed run asked to change what it cannot."""


MOVABLE = ("data", "val_data")      # paths a resume may change: the data moved, its content fingerprints checked


def resume_config(saved: dict, given: Config, explicit) -> tuple[Config, list[str]]:
    """The config a resumed run continues with, and notes of what changed: the checkpoint's config, the
    runtime fields of this command line, and the changeable fields (options.CHANGEABLE) given explicitly
    (a new --lr without --lr-d scales the discriminators' rate alike under Adam), and a new path of the data (MOVABLE:
    the run's checks of its content fingerprints refuse other content). An explicit value of any other field
    that differs from the checkpoint's raises ResumeError saying why it is kept, unless the run does not read
    it (another method's option, unused_options): that is kept too, and noted by the run (unread_notes)."""
    run = from_flat(saved)
    old, table = flat(run), flat_fields()
    rule = {name: f.metadata.get("resume") for name, (_, f) in table.items()}
    updates = {k: get(given, k) for k, r in rule.items() if r == RUNTIME}
    unread = set(unused_options(run)) | {n for n in explicit if table.get(n, (None,))[0] not in (None, run.mode)}
    notes = []
    for name in sorted(explicit):
        new, was = get(given, name), old.get(name)
        if rule.get(name) == RUNTIME or new == was or new is None or name in unread:   # unread: noted by the run
            continue
        if rule.get(name) == CHANGEABLE:
            updates[name] = new
            notes.append(f"{flag(name)} {new} (was {was})")
            continue
        if name in MOVABLE and new is not None and (was is not None or name == "val_data"):  # the data moved:
            updates[name] = new                                     # its content is checked (a val.h5 beside
            where = was if was is not None else "the val.h5 beside --data"   # the data moved away, too)
            notes.append(f"{flag(name)} {new} (was {where}; read only if its content is the run's)")
            continue
        why = rule.get(name) or "what the run started with"
        raise ResumeError(f"{flag(name)} {new} differs from the checkpoint's {was}: a resumed run keeps "
                          f"{why}; drop the option to continue the run, or start a new run with another --out")
    if "lr" in updates and "lr_d" not in updates and old["lr"] and old["lr_d"] and old.get("optimizer") != "sgd" \
            and "lr_d" not in unread:
        # Adam: lr_d follows G_IS's rate; sgd: it is the preset's Adam rate, whatever --lr (as a fresh run sets it)
        updates["lr_d"] = old["lr_d"] * updates["lr"] / old["lr"]
        notes.append(f"--lr-d {updates['lr_d']:g} (was {old['lr_d']:g}: scaled with --lr)")
    return from_flat({**old, **updates}), notes


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, except None (a value a preset or recipe fills, which the help says,
    or none at all): argparse printed "(default: None)"."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def filled_by(name: str) -> str:
    """Where a field whose default is None gets its value: the presets' or recipes' values, or ''."""
    for option, table in (("--preset", PRESETS), ("--recipe", RECIPES)):
        values = {k: v[name] for k, v in table.items() if name in v}
        if values:
            return f" (default: {option}'s: " + ", ".join(f"{k} {v}" for k, v in values.items()) + ")"
    return ""


def _parser(explicit_only: bool = False) -> argparse.ArgumentParser:
    """The command line; explicit_only: no defaults, so that the result holds what was given."""
    p = Parser(prog="python -m cycleseg.train",
               description="Semi-supervised segmentation with a CycleGAN (Mondal et al. 2019).",
               formatter_class=_DefaultsHelp,
               argument_default=argparse.SUPPRESS if explicit_only else None)
    for name, (holder, f) in flat_fields().items():
        text = f.metadata.get("help", "").replace("%", "%%")         # argparse formats help with %
        if holder:
            text = f"{holder}: {text}"
        if f.default is None:
            text += filled_by(name).replace("%", "%%")
        default = argparse.SUPPRESS if explicit_only else f.default
        kind = str(f.type).split(" ")[0]
        if kind == "bool":                                          # bool, or bool | None (None: from the recipe)
            p.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        typ = {"int": int, "float": float, "str": str}[kind]
        p.add_argument(flag(name), type=typ, default=default, choices=f.metadata.get("choices"), help=text)
    p.add_argument("--dry-run", action="store_true", default=False,
                   help="print the resolved config and each network's parameter count, then exit")
    return p


def parse_args(argv=None) -> tuple[Config, bool]:
    """Command line -> (Config, dry_run). Every option is a --flag (underscores as dashes; a method's under its
    prefix)."""
    ns = vars(_parser().parse_args(argv))
    dry = ns.pop("dry_run")
    return from_flat(ns), dry


def given_fields(argv=None) -> set[str]:
    """The flat names of the options given explicitly on a command line (what a resumed run is asked to change)."""
    ns = vars(_parser(explicit_only=True).parse_args(argv))
    return set(ns) - {"dry_run"}


def least_side(generator: str, mode: str = "partial") -> int:
    """The smallest image side the networks of `mode` read (G_IS alone: `partial`): its generators' reflect
    pads need 8, the UNet's four halvings 16, Hung et al.'s discriminator 32."""
    return max(METHODS[mode].min_side, SIDE_MULTIPLE.get(generator, 4))


def check_image_side(side: int, mode: str, what: str, generator: str = "resnet") -> None:
    """UsageError (starting with `what`) unless the networks of `mode` can read images `side` pixels wide: a
    multiple of 4 (the ResNet generators halve twice and double back; 16 with the UNet G_IS, which halves four
    times) of at least the method's min_side (8; 32 for Hung et al.'s discriminator)."""
    multiple, least = SIDE_MULTIPLE.get(generator, 4), least_side(generator, mode)
    if not isinstance(side, int) or isinstance(side, bool):
        raise UsageError(f"{what}: a whole number of pixels, got {side!r}")
    if side > MAX_SIDE:
        raise UsageError(f"{what}: at most {MAX_SIDE} pixels")
    if side < least or side % multiple:
        why = ("the generators halve the image twice and double it back" if multiple == 4 else
               "the UNet halves the image four times and doubles it back")
        raise UsageError(f"{what}: the networks need a multiple of {multiple} of at least {least} ({why}"
                         + ("; Hung et al.'s discriminator halves it five times)" if least >= 32 else ")"))


def check_device(name: str) -> str:
    """`name` if this machine has that device; ValueError saying what it has otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device {name!r}: not a device (cpu, cuda or cuda:N)") from None
    if device.type == "cpu" and device.index not in (None, 0):   # torch takes cpu:1 and runs on the one CPU
        raise UsageError(f"--device {name}: the CPU is one device; give cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {name}: this machine has no CUDA GPU that torch can use "
                             f"(torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: cycleseg runs on cpu or cuda")
    return name
