"""The pack's main job, headless: start ComfyUI with this pack, queue the shipped toy-world EVE-stack
workflow (plug-and-play: the shipped toy backbone + edit adapter + video adapter, a generated clip,
"make the circle blue", sampling started from the noised input at denoise 0.7), collect the edited
video and its frames into an output folder, print the toy evaluator's scores, stop the server.
``--workflow all`` also runs every other shipped workflow (the real-format tiny random models
for the SD 1.5-named graphs are written first, with a moving-shapes mp4 as their input).

    .venv/bin/python scripts/run_demo.py [--out demo_output] [--workflow workflows/api/X.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "demo_output"))
    ap.add_argument("--workflow", default=os.path.join(ROOT, "workflows", "api", "fdd_toy_plug_and_play_video_edit.json"),
                    help="an API-format workflow to queue, or 'all' for every workflows/api/*.json")
    ap.add_argument("--models", default=os.path.join(ROOT, ".models", "tiny"),
                    help="where the tiny demo models tree is written")
    ap.add_argument("--timeout", type=float, default=1200)
    args = ap.parse_args(argv)

    from fdd.testing.comfy_server import ComfyServer, prepare_demo_inputs
    from fdd.testing.models_tree import write_models_tree

    t0 = time.time()
    print(f"[demo] writing tiny demo models to {args.models}", flush=True)
    write_models_tree(args.models)
    work = os.path.join(ROOT, ".cache", "demo-comfyui")
    shutil.rmtree(os.path.join(work, "output"), ignore_errors=True)
    import glob

    paths = sorted(glob.glob(os.path.join(ROOT, "workflows", "api", "*.json"))) if args.workflow == "all" \
        else [args.workflow]
    server = ComfyServer(work, args.models)
    print(f"[demo] starting ComfyUI on {server.url} (log: {server.log_path})", flush=True)
    with server:
        clip = prepare_demo_inputs(server)
        files, scores = [], []
        for path in paths:
            with open(path) as fh:
                prompt = json.load(fh)
            print(f"[demo] input clip {clip}; queueing {os.path.relpath(path, ROOT)}", flush=True)
            entry = server.wait(server.queue(prompt), timeout=args.timeout)
            status = entry.get("status", {})
            if status.get("status_str") != "success":
                msgs = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                print(f"[demo] the workflow failed: {json.dumps(msgs)[:3000]}", file=sys.stderr)
                print(server.log_tail(), file=sys.stderr)
                return 1
            files += server.output_files(entry)
            for node_id, out in entry.get("outputs", {}).items():
                if prompt.get(node_id, {}).get("class_type") == "FDD_ToyScore":
                    for text in out.get("text", []):
                        scores.append((os.path.basename(path), json.loads(text)))
    os.makedirs(args.out, exist_ok=True)
    frames_dir = os.path.join(args.out, "frames")
    shutil.rmtree(frames_dir, ignore_errors=True)
    os.makedirs(frames_dir)
    copied = []
    for f in files:
        name = os.path.basename(f)
        dest = os.path.join(frames_dir if name.endswith(".png") else args.out, name)
        shutil.copy2(f, dest)
        copied.append(dest)
    shutil.copy2(clip, os.path.join(args.out, "input_" + os.path.basename(clip)))
    videos = [c for c in copied if c.endswith((".mp4", ".webp"))]
    n_frames = len([c for c in copied if c.endswith(".png")])
    print(f"[demo] done in {time.time() - t0:.0f}s")
    for v in videos:
        print(f"[demo] edited video: {v}")
    print(f"[demo] {n_frames} frames (edited and input, upscaled): {frames_dir}")
    for name, sc in scores:
        keys = ("attribute_accuracy", "edit_accuracy", "preservation", "attributes_constant", "path_residual_px",
                "contamination")
        print(f"[demo] {name}: '{sc['instruction']}' -> toy evaluator: "
              + ", ".join(f"{k} {sc[k]:.3f}" if isinstance(sc.get(k), float) else f"{k} {sc.get(k)}" for k in keys))
    scores_path = os.path.join(args.out, "scores.json")
    with open(scores_path + ".tmp", "w") as fh:  # written whole, then renamed: never half a file
        json.dump([{"workflow": n, **s} for n, s in scores], fh, indent=1)
    os.replace(scores_path + ".tmp", scores_path)
    return 0 if videos and n_frames else 1


if __name__ == "__main__":
    raise SystemExit(main())
