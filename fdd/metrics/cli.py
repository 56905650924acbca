"""``python -m fdd eval``: run an editing method over a benchmark and measure it, or measure
an existing edit.

    python -m fdd eval bench DATASET --method plug_and_play --out DIR \\
        --clip MODELS/fdd_metrics/clip/clip-vit-large-patch14 \\
        [--pickscore DIR] [--viclip DIR] [--set checkpoint=...] [--set controlnet=...] \\
        [--seed 0] [--frames 16] [--size 256] [--device cpu] [--keep-going]
    python -m fdd eval measure --input IN --output OUT --output-caption TEXT \\
        [--input-caption TEXT] --clip DIR [--pickscore DIR] [--viclip DIR] [--json FILE] [--grid FILE]

DATASET is a LOVEU-TGVE 2023 folder (frame folders + the prompt sheet as CSV), a TGVE CSV, or
a JSONL / JSON / CSV manifest (see :mod:`fdd.metrics.benchmark`). ``--set key=value`` passes
method options (model paths, steps, ...). ``bench`` writes items/<id>/{metrics.json,grid.png},
results.json, aggregate.json and report.html into --out and prints one JSON line per item.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def build_parser(prog: str = "python -m fdd eval") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)

    def models(p):
        p.add_argument("--clip", help="CLIP folder (transformers format: config.json, model.safetensors, "
                                      "preprocessor_config.json, vocab.json + merges.txt)")
        p.add_argument("--pickscore", help="PickScore folder (the same format; PickScore_v1 + CLIP-H processor)")
        p.add_argument("--viclip", help="ViCLIP folder (ViClip-InternVid-10M-FLT.pth + CLIP BPE tokenizer files)")
        p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")

    b = sub.add_parser("bench", help="run a method over a dataset, measure, write JSON + report")
    b.add_argument("dataset", help="TGVE folder / TGVE CSV / manifest (.jsonl, .json, .csv)")
    b.add_argument("--method", default="plug_and_play", help="plug_and_play, eve, assd, ei2, identity, or any "
                                                             "registered method (default plug_and_play)")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (checkpoint, controlnet, motion_module, tokenizer, lora, lora_strength, "
                        "t2v, steps, cfg, image_cfg, lr, context_frames, context_overlap, denoise); repeatable")
    b.add_argument("--seed", type=int, default=0, help="the fixed seed of every item (default 0)")
    b.add_argument("--frames", type=int, default=0, help="frames per clip at a uniform stride (0 = all)")
    b.add_argument("--size", type=int, default=0, help="shorter side in pixels (0 = native)")
    b.add_argument("--root", help="where the TGVE frame folders are, if not next to the CSV")
    b.add_argument("--limit", type=int, default=0, help="only the first N items (0 = all)")
    b.add_argument("--grid-columns", type=int, default=8, help="frames per row of the comparison grids")
    b.add_argument("--keep-going", action="store_true", help="record a failing item's error and continue")
    b.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    models(b)

    m = sub.add_parser("measure", help="measure one edit (input and output clips)")
    m.add_argument("--input", required=True, help="input clip: frame folder or video file")
    m.add_argument("--output", required=True, help="edited clip: frame folder or video file")
    m.add_argument("--output-caption", required=True, help="caption of the desired output")
    m.add_argument("--input-caption", default="", help="caption of the input (enables CLIP_dir / ViCLIP_dir)")
    m.add_argument("--json", help="write the metrics JSON here (default: stdout only)")
    m.add_argument("--grid", help="write the comparison grid PNG here")
    models(m)
    return ap


def _options(pairs: list[str]) -> dict:
    out = {}
    for item in pairs:
        if "=" not in item:
            raise SystemExit(f"--set: expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    from ..models.errors import ModelLoadError
    from .benchmark import load_clip_frames, load_dataset, run_benchmark
    from .evaluate import evaluate_edit, load_metric_models
    from .grid import comparison_grid, save_png

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    try:
        models = load_metric_models(args.clip, args.pickscore, args.viclip, device=args.device)
        if args.what == "measure":
            a, b = load_clip_frames(args.input), load_clip_frames(args.output)
            res = evaluate_edit(models, a, b, args.output_caption, args.input_caption)
            res["models"] = models.describe()
            text = json.dumps(res, indent=1)
            if args.json:
                tmp = args.json + ".tmp"
                with open(tmp, "w") as fh:
                    fh.write(text)
                os.replace(tmp, args.json)
            if args.grid:
                save_png(comparison_grid(a, b), args.grid)
            print(text)
            return 0
        items = load_dataset(args.dataset, args.root)
        if args.limit:
            items = items[:args.limit]
        summary = run_benchmark(items, args.method, models, args.out, options=_options(args.set), seed=args.seed,
                                max_frames=args.frames or None, size=args.size or None, device=args.device,
                                grid_columns=args.grid_columns, keep_going=args.keep_going,
                                log=lambda line: print(line, flush=True))
        print(json.dumps({"done": True, "items": len(summary["items"]), "failed": summary["aggregate"]["failed"],
                          "report": os.path.join(args.out, "report.html"),
                          "results": os.path.join(args.out, "results.json")}), flush=True)
        return 1 if summary["aggregate"]["failed"] else 0
    except (ModelLoadError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
