"""``python -m fdd.toy dataset --out DIR --items N``: write a toy-world dataset in the FDD format.

``python -m fdd.toy train COMPONENT --out DIR [--minutes M] [--steps N] [--seed S]``: train one
toy model (text, vae, unet, controlnet, motion, t2v) or ``all`` of them in order, exporting
the real-format files under ``DIR/export/`` (see :mod:`fdd.toy.train`)."""

from __future__ import annotations

import argparse
import json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fdd.toy", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dataset", help="write clips, ground-truth edits and manifest.jsonl")
    d.add_argument("--out", required=True)
    d.add_argument("--items", type=int, default=64)
    d.add_argument("--frames", type=int, default=8)
    d.add_argument("--size", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train", help="train toy models and export them in the real formats")
    t.add_argument("component", help="text | vae | unet | controlnet | motion | t2v | all")
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=None,
                   help="training budget (default: the notes' budget per component)")
    t.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--eval-every", type=int, default=None)
    t.add_argument("--eval-samples", type=int, default=None)
    t.add_argument("--ckpt-every", type=int, default=None)
    t.add_argument("--cfg-scale", type=float, default=None)
    args = ap.parse_args(argv)
    if args.cmd == "dataset":
        from .dataset import write_toy_dataset

        print(write_toy_dataset(args.out, args.items, args.frames, args.size, args.seed))
        return 0
    from .train import COMPONENTS, DEFAULT_MINUTES, DEFAULT_SETTINGS, TrainConfig, train

    names = list(COMPONENTS) if args.component == "all" else [args.component]
    for name in names:
        cfg = TrainConfig(seed=args.seed, minutes=args.minutes if args.minutes is not None else DEFAULT_MINUTES[name],
                          steps=args.steps, **DEFAULT_SETTINGS.get(name, {}))
        for k in ("batch", "lr", "eval_every", "eval_samples", "ckpt_every", "cfg_scale"):
            if getattr(args, k) is not None:
                setattr(cfg, k, getattr(args, k))
        res = train(name, args.out, cfg)
        print(json.dumps({"component": name, "step": res.get("step"), "loss": res.get("loss"),
                          "eval": res.get("eval")}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
