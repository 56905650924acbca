"""``python -m fdd.toy dataset --out DIR --items N``: write a toy-world dataset in the FDD format.

``python -m fdd.toy ship --run DIR``: write a trained run as the pack's shipped models with cards.

``python -m fdd.toy train COMPONENT --out DIR [--minutes M] [--steps N] [--seed S]``: train one
toy model (text, vae, unet, controlnet, motion, t2v) or ``all`` of them in order, exporting
the real-format files under ``DIR/export/`` (see :mod:`fdd.toy.train`)."""

from __future__ import annotations

import argparse
import json

from .world import SHAPES, TASKS


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The CLI's parser and its ``train`` sub-parser."""
    ap = argparse.ArgumentParser(prog="python -m fdd.toy", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dataset", help="write clips, ground-truth edits and manifest.jsonl")
    d.add_argument("--out", required=True)
    d.add_argument("--items", type=int, default=64)
    d.add_argument("--frames", type=int, default=8)
    d.add_argument("--size", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train", help="train toy models and export them in the real formats")
    t.add_argument("component", help="text | vae | unet | controlnet | motion | t2v | decoder | all")
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=None,
                   help="cap on the component's total training minutes, resumed training included "
                        "(default: DEFAULT_MINUTES per component)")
    t.add_argument("--steps", type=int, default=None,
                   help="training steps (default: DEFAULT_STEPS per component)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch", type=int, default=None, help="images per step (vae, unet, controlnet)")
    t.add_argument("--clips-per-batch", type=int, default=None, help="clips per step (motion, t2v)")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--eval-every", type=int, default=None)
    t.add_argument("--eval-samples", type=int, default=None)
    t.add_argument("--ckpt-every", type=int, default=None)
    t.add_argument("--cfg-scale", type=float, default=None)
    t.add_argument("--offset-noise", type=float, default=None, help="offset-noise scale (see training_noise)")
    t.add_argument("--device", default=None, help="torch device to train on (default cpu; e.g. cuda)")
    t.add_argument("--decoder-x0", type=float, default=None,
                   help="decoder: share of each batch decoded from the backbone's one-step clean-latent "
                        "estimate (see train.train_vae_decoder; default 0)")
    t.add_argument("--decoder-x0-tmax", type=int, default=None,
                   help="decoder: timesteps of those estimates are drawn below this (default 400)")
    t.add_argument("--task-weights", default=None, type=_task_weights,
                   help="controlnet, unet: relative sampling weight per edit task, e.g. Add=3,Local=2 (for the "
                        "unet, of the edited half of its frames; tasks not named keep weight 1; default: "
                        "uniform)")
    t.add_argument("--shape-weights", default=None, type=_shape_weights,
                   help="motion, t2v: relative sampling weight per shape of the training clips, e.g. "
                        "square=3 (shapes not named keep weight 1; default: uniform)")
    t.add_argument("--parallel", action="store_true",
                   help="with 'all': train the components that do not depend on each other at the same time, "
                        "one subprocess each (text, vae, then unet and t2v, then controlnet, motion and the decoder); "
                        "each writes RUN/<component>.log")
    sh = sub.add_parser("ship", help="write a trained run as the shipped models tree with measured model cards")
    sh.add_argument("--run", required=True, help="the training run folder (python -m fdd.toy train all --out RUN)")
    sh.add_argument("--out", default=None, help="destination (default: the pack's models/toy)")
    sh.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16")
    sh.add_argument("--n-image", type=int, default=256, help="samples per image-model evaluation")
    sh.add_argument("--n-video", type=int, default=64, help="clips per video-model evaluation")
    sh.add_argument("--cfg-scale", type=float, default=None,
                    help="one guidance scale for every model's evaluation (default: fdd.toy.ship.GUIDANCE per model)")
    u = sub.add_parser("unpack", help="turn a shipped toy tree back into a training run folder that 'train' "
                                      "continues and 'ship' re-ships (see ship.unpack)")
    u.add_argument("--models", default=None, help="shipped tree (default: the pack's models/toy)")
    u.add_argument("--out", required=True, help="new or empty run folder")
    f = sub.add_parser("fill", help="box-fill statistics per shape (how sharply the models draw squares; see "
                                    "fdd.toy.diagnose)")
    f.add_argument("--models", default=None, help="shipped tree or training run (default: the pack's models/toy)")
    f.add_argument("--n-image", type=int, default=96)
    f.add_argument("--n-video", type=int, default=24)
    f.add_argument("--seed", type=int, default=7)
    return ap, t


def main(argv=None) -> int:
    ap, t = build_parser()
    args = ap.parse_args(argv)
    if args.cmd == "ship":
        import torch

        from .ship import SHIPPED_DIR, ship

        cards = ship(args.run, args.out or SHIPPED_DIR, torch.float16 if args.dtype == "fp16" else torch.float32,
                     args.n_image, args.n_video, args.cfg_scale)
        print(json.dumps({"floors_met": cards["floors_met"], "total_bytes": cards["total_bytes"],
                          "quality": {k: v["quality"] for k, v in cards["models"].items()}}, default=str))
        return 0
    if args.cmd == "unpack":
        from .ship import unpack

        print(json.dumps(unpack(args.models, args.out)))
        return 0
    if args.cmd == "fill":
        from .diagnose import shape_fill_report
        from .ship import toy_paths

        print(json.dumps(shape_fill_report(toy_paths(args.models), args.n_image, args.n_video, args.seed), indent=1))
        return 0
    if args.cmd == "dataset":
        from .dataset import write_toy_dataset

        print(write_toy_dataset(args.out, args.items, args.frames, args.size, args.seed))
        return 0
    from dataclasses import replace

    from .train import (COMPONENTS, STAGES, DEFAULT_MINUTES, DEFAULT_SETTINGS, DEFAULT_STEPS, TrainConfig,
                        train)

    if args.parallel:
        if args.component != "all":
            raise SystemExit("--parallel: only with the component 'all'")
        return _train_waves(args, t)
    names = list(COMPONENTS) if args.component == "all" else [args.component]
    for name in names:
        cfg = TrainConfig(seed=args.seed, minutes=args.minutes if args.minutes is not None else DEFAULT_MINUTES[name],
                          steps=args.steps if args.steps is not None else DEFAULT_STEPS[name],
                          **DEFAULT_SETTINGS.get(name, {}))
        for k in ("batch", "clips_per_batch", "lr", "eval_every", "eval_samples", "ckpt_every", "cfg_scale",
                  "offset_noise", "device", "task_weights", "shape_weights", "decoder_x0", "decoder_x0_tmax"):
            if getattr(args, k) is not None:
                setattr(cfg, k, getattr(args, k))
        res = train(name, args.out, cfg)
        if args.steps is None and args.lr is None:
            for steps, lr, offset in STAGES.get(name, []):
                res = train(name, args.out, replace(cfg, steps=steps, lr=lr, offset_noise=offset))
        print(json.dumps({"component": name, "step": res.get("step"), "loss": res.get("loss"),
                          "eval": res.get("eval")}, default=str))
    return 0


def _weights(names: tuple, field: str, example: str):
    """An argparse type: ``A=3,B=2`` -> every name in ``names`` at weight 1 except those given
    (checked by train.draw_probabilities, whose errors name ``field``)."""
    def parse(text: str) -> dict:
        from .train import draw_probabilities

        w = {t: 1.0 for t in names}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, val = part.partition("=")  # no '=': val is '' and float() refuses it
            try:
                w[name.strip()] = float(val)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT pairs like {example}, got {part!r}") from None
        try:
            draw_probabilities(w, names, field)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return w

    parse.__name__ = field  # argparse names the type in its 'invalid ... value' message
    return parse


_task_weights = _weights(TASKS, "task_weights", "Add=3,Local=2")
_shape_weights = _weights(SHAPES, "shape_weights", "square=3")


def _component_flags(args, parser) -> list[str]:
    """The ``train`` flags of ``args`` rebuilt from the parsed values (not filtered from argv, so
    a flag value such as ``--out all`` survives), without the component and ``--parallel``."""
    flags = []
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "parallel"):
            continue
        value = getattr(args, action.dest)
        if value is None:
            continue
        if isinstance(value, dict):  # --task-weights / --shape-weights, parsed to {name: weight}
            value = ",".join(f"{k}={v:g}" for k, v in value.items())
        flags += [action.option_strings[0], str(value)]
    return flags


#: ``train all --parallel``: components of one wave depend only on earlier waves
WAVES = (("text",), ("vae",), ("unet", "t2v"), ("controlnet", "motion", "decoder"))


def _train_waves(args, parser) -> int:
    """Run ``train all`` as :data:`WAVES`, each wave's components as concurrent subprocesses of
    this CLI (same flags; with one thread each on a CPU, use as many cores as the wave has jobs).
    Stops at the first wave with a failed component, naming its log."""
    import os
    import subprocess
    import sys

    from .train import COMPONENTS

    assert sorted(c for w in WAVES for c in w) == sorted(COMPONENTS)
    flags = _component_flags(args, parser)
    os.makedirs(args.out, exist_ok=True)
    for wave in WAVES:
        jobs = []
        for name in wave:
            log = os.path.join(args.out, f"{name}.log")
            with open(log, "w") as fh:
                jobs.append((name, log, subprocess.Popen([sys.executable, "-m", "fdd.toy", "train", name, *flags],
                                                         stdout=fh, stderr=subprocess.STDOUT)))
        failed = [(name, log) for name, log, p in jobs if p.wait() != 0]
        if failed:
            raise SystemExit("train all --parallel: " + ", ".join(f"{n} failed (see {log})" for n, log in failed))
        for name, log, _ in jobs:
            with open(log) as fh:
                lines = fh.read().strip().splitlines()
            print(lines[-1] if lines else json.dumps({"component": name}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
