"""Command line of the ``fdd`` library.

    python -m fdd train CONFIG [--set key=value ...] [--device cpu] [--quiet]
    torchrun --nproc_per_node N -m fdd train CONFIG       # data parallel (gloo on CPU, nccl on CUDA)

``train`` runs an FDD alignment (EVE §3.2) from a JSON / TOML config (keys: ``FDDConfig``),
resuming from ``output_dir/checkpoint.pt`` when present, and writes the aligned LoRA (kohya
format, loadable by ComfyUI's LoraLoader) to ``output_dir/lora_name``. One JSON line per
iteration goes to stdout (rank 0) and to ``output_dir/log.jsonl``. Subcommands are
registered in :data:`COMMANDS` so others (e.g. ``eval``) can be added.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _cmd_train(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from .distill import distributed as D
    from .distill.config import load_config
    from .distill.trainer import resolve_device, train

    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise SystemExit(f"--set: expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = _parse_value(v)
    if args.device:
        overrides["device"] = args.device
    cfg = load_config(args.config, overrides)
    device = resolve_device(cfg.device)
    info = D.init_from_env(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    if args.threads:
        torch.set_num_threads(args.threads)
    log_path = os.path.join(cfg.output_dir, "log.jsonl")
    if info.is_main:
        os.makedirs(cfg.output_dir, exist_ok=True)

    def log(entry: dict) -> None:
        if not info.is_main:
            return
        line = json.dumps(entry)
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if not args.quiet:
            print(line, flush=True)

    try:
        res = train(cfg, log=log, device=device, dist_info=info)
    finally:
        if info.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if info.is_main:
        print(json.dumps({"done": True, "steps": res.steps, "lora": res.lora_path,
                          "checkpoint": res.checkpoint_path}), flush=True)
    return 0


COMMANDS = {"train": _cmd_train}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m fdd", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="run an FDD alignment from a config file")
    t.add_argument("config", help="JSON or TOML config (keys of fdd.distill.FDDConfig)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key (value parsed as JSON, else a string); repeatable")
    t.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the config's 'device')")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--quiet", action="store_true", help="no per-iteration lines on stdout")
    sub.add_parser("eval", add_help=False, help="benchmark / measure video edits (python -m fdd eval -h)")
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["eval"]:
        from .metrics.cli import main as eval_main

        return eval_main(argv[1:])
    args = build_parser().parse_args(argv)
    return COMMANDS[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
