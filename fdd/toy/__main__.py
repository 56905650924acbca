"""``python -m fdd.toy dataset --out DIR --items N``: write a toy-world dataset in the FDD format."""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fdd.toy", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dataset", help="write clips, ground-truth edits and manifest.jsonl")
    d.add_argument("--out", required=True)
    d.add_argument("--items", type=int, default=64)
    d.add_argument("--frames", type=int, default=8)
    d.add_argument("--size", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from .dataset import write_toy_dataset

    print(write_toy_dataset(args.out, args.items, args.frames, args.size, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
