"""``python -m fdd.testing models --root DIR`` writes the tiny models tree;
``python -m fdd.testing clip --out FILE.mp4`` writes the demo clip."""

from __future__ import annotations

import argparse
import os


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fdd.testing", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("models", help="write the tiny models tree (ComfyUI models layout)")
    m.add_argument("--root", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--force", action="store_true")
    c = sub.add_parser("clip", help="write the moving-shapes demo clip as mp4")
    c.add_argument("--out", required=True)
    c.add_argument("--frames", type=int, default=16)
    c.add_argument("--size", type=int, default=64)
    c.add_argument("--fps", type=float, default=8.0)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.cmd == "models":
        from .models_tree import write_models_tree

        for k, p in write_models_tree(args.root, seed=args.seed, force=args.force).items():
            print(f"{k}: {p}")
    else:
        from .clip import moving_shapes_clip, write_video

        print(write_video(moving_shapes_clip(args.frames, args.size, args.size), args.out, args.fps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
