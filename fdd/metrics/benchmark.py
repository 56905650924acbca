"""A TGVE-style benchmark runner: datasets, a registry of editing methods, metrics, a report.

Datasets (:func:`load_dataset`):

- **LOVEU-TGVE 2023 layout**: a folder with one frame folder per video (``<root>/<video>/``
  holding ``00000.jpg ...``, or one level down, e.g. ``<root>/DAVIS_480p/<video>/``; a
  ``<video>.mp4`` works too) and the prompt sheet exported as CSV (one row per video). Column
  names are matched case- and punctuation-insensitively:

  ========================  ==============================================================
  video                     ``Video name`` (or ``video``)
  input caption             ``Our GT caption`` (or ``original caption``, ``input caption``)
  one column per task       ``Style Change Caption``, ``Object Change Caption``,
                            ``Background Change Caption``, ``Multiple Changes Caption``;
                            TGVE+'s ``Remove ...``, ``Add ...``, ``Texture ...``
                            (``<Task> Caption`` / ``<Task> Change Caption``)
  optional instructions     ``<Task> Instruction`` (TGVE+ gives instructions; without one
                            the output caption is used as the instruction)
  ========================  ==============================================================

  Every non-empty task cell becomes one item ``<video>/<task>``.
- **Manifest**: JSONL (one object per line), a JSON list, or a CSV with an
  ``output_caption`` column; fields ``clip`` (a frame folder or a video file, relative to the
  manifest), ``input_caption``, ``instruction``, ``output_caption``, optional ``task``
  (default ``edit``) and ``id``.

Methods (:data:`METHODS`, name -> callable ``fn(frames, item, seed, ctx) -> frames``):
``plug_and_play`` (EVE §3.1.3), ``eve`` (plug-and-play with an aligned LoRA), ``assd``, ``ei2``,
``identity`` (no edit: the reference values of the metrics). Others (EI²) are added with
:func:`register_method`. Every item runs with the same fixed seed.

Outputs in ``out_dir``: ``items/<id>/metrics.json`` and ``items/<id>/grid.png`` (input frames
over output frames) per item, ``results.json`` (settings, every item, aggregates overall and by
task), ``aggregate.json`` and ``report.html`` (the tables and the grids).
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .evaluate import METRIC_KEYS, EmbeddingCache, MetricModels, evaluate_edit
from .grid import comparison_grid, save_png

TGVE_TASKS = ("style", "object", "background", "multiple")
TGVE_PLUS_TASKS = ("remove", "add", "texture")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_EXT = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")


@dataclass
class BenchItem:
    id: str
    clip: str
    output_caption: str
    input_caption: str = ""
    instruction: str = ""
    task: str = "edit"
    video: str = ""

    @property
    def edit_instruction(self) -> str:
        """The instruction, or the output caption when the dataset gives none (TGVE)."""
        return self.instruction.strip() or self.output_caption


# ------------------------------------------------------------------------------------------
# datasets

def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "item"


def _find_clip(root: str, video: str) -> str:
    cands = [os.path.join(root, video)] + [os.path.join(root, video + e) for e in VIDEO_EXT]
    for sub in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        d = os.path.join(root, sub)
        if os.path.isdir(d):
            cands.append(os.path.join(d, video))
            cands.extend(os.path.join(d, video + e) for e in VIDEO_EXT)
    for c in cands:
        if os.path.exists(c):
            return c
    raise FileNotFoundError(f"video {video!r}: no frame folder or video file under {root} "
                            f"(looked for {video}/ and {video}.mp4, also one folder down)")


def read_tgve_csv(csv_path: str, root: str | None = None) -> list[BenchItem]:
    """Items of a LOVEU-TGVE 2023 / TGVE+ prompt sheet exported as CSV (see the module docstring)."""
    root = root or os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{csv_path}: the prompt sheet has no rows")
    cols = {_norm(c): c for c in rows[0] if c}
    vcol = next((cols[c] for c in ("video_name", "video", "name", "clip") if c in cols), None)
    if vcol is None:
        raise ValueError(f"{csv_path}: no 'Video name' column (columns: {', '.join(rows[0])})")
    icol = next((cols[c] for c in ("our_gt_caption", "gt_caption", "original_caption", "input_caption",
                                   "caption", "source_caption") if c in cols), None)
    items = []
    for r in rows:
        video = (r.get(vcol) or "").strip()
        if not video:
            continue
        clip = None
        for task in TGVE_TASKS + TGVE_PLUS_TASKS:
            ccol = next((cols[c] for c in (f"{task}_change_caption", f"{task}_changes_caption", f"{task}_caption",
                                           f"{task}_output_caption") if c in cols), None)
            if ccol is None or not (r.get(ccol) or "").strip():
                continue
            tcol = next((cols[c] for c in (f"{task}_instruction", f"{task}_change_instruction",
                                           f"{task}_changes_instruction") if c in cols), None)
            clip = clip or _find_clip(root, video)
            items.append(BenchItem(id=f"{_safe_id(video)}__{task}", clip=clip, video=video, task=task,
                                   output_caption=r[ccol].strip(),
                                   input_caption=(r.get(icol) or "").strip() if icol else "",
                                   instruction=(r.get(tcol) or "").strip() if tcol else ""))
    if not items:
        raise ValueError(f"{csv_path}: no task caption columns found (e.g. 'Style Change Caption'); "
                         f"columns: {', '.join(rows[0])}")
    return items


def read_manifest(path: str) -> list[BenchItem]:
    """Items of a JSONL / JSON / CSV manifest (see the module docstring)."""
    base = os.path.dirname(os.path.abspath(path))
    if path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [{_norm(k): v for k, v in r.items() if k} for r in csv.DictReader(fh)]
    elif path.lower().endswith(".json"):
        with open(path, encoding="utf-8") as fh:
            rows = json.load(fh)
    else:
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(ln) for ln in fh if ln.strip()]
    items, seen = [], set()
    for i, r in enumerate(rows):
        clip = r.get("clip") or r.get("video") or r.get("path")
        if not clip or not (r.get("output_caption") or "").strip():
            raise ValueError(f"{path}: entry {i + 1} needs 'clip' and 'output_caption' (got {sorted(r)})")
        clip = clip if os.path.isabs(clip) else os.path.join(base, clip)
        if not os.path.exists(clip):
            raise FileNotFoundError(f"{path}: entry {i + 1}: clip {clip} does not exist")
        task = (r.get("task") or "edit").strip() or "edit"
        iid = _safe_id(str(r.get("id") or f"{os.path.splitext(os.path.basename(clip.rstrip('/')))[0]}__{task}"))
        while iid in seen:
            iid += "_"
        seen.add(iid)
        items.append(BenchItem(id=iid, clip=clip, output_caption=r["output_caption"].strip(),
                               input_caption=(r.get("input_caption") or "").strip(),
                               instruction=(r.get("instruction") or "").strip(), task=task,
                               video=os.path.basename(clip.rstrip("/"))))
    return items


def load_dataset(path: str, root: str | None = None) -> list[BenchItem]:
    """A TGVE folder (its CSV inside), a TGVE CSV (wide: one row per video) or a manifest."""
    path = os.fspath(path)
    if os.path.isdir(path):
        csvs = sorted(f for f in os.listdir(path) if f.lower().endswith(".csv"))
        if not csvs:
            raise ValueError(f"{path}: a TGVE folder needs its prompt sheet exported as .csv inside")
        items = []
        for c in csvs:
            items += read_tgve_csv(os.path.join(path, c), root or path)
        return items
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset {path} does not exist")
    if path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = [_norm(c) for c in next(csv.reader(fh), [])]
        if "output_caption" not in header:
            return read_tgve_csv(path, root)
    return read_manifest(path)


def load_clip_frames(path: str, max_frames: int | None = None, size: int | None = None) -> torch.Tensor:
    """``[F, H, W, 3]`` 0..1 from a frame folder (sorted image files) or a video file (PyAV).
    ``max_frames`` keeps that many frames at a uniform stride (first frame included); ``size``
    scales the shorter side to ``size`` (aspect kept, sides rounded to multiples of 8)."""
    from PIL import Image

    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXT))
        if not files:
            raise ValueError(f"{path}: no image files ({', '.join(IMAGE_EXT)}) in the frame folder")
        if max_frames and len(files) > max_frames:
            files = [files[int(i * len(files) / max_frames)] for i in range(max_frames)]
        arr = np.stack([np.asarray(Image.open(os.path.join(path, f)).convert("RGB")) for f in files])
    else:
        import av

        with av.open(path) as c:
            arr = np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)])
        if max_frames and len(arr) > max_frames:
            arr = arr[[int(i * len(arr) / max_frames) for i in range(max_frames)]]
    x = torch.from_numpy(arr).float() / 255.0
    if size:
        h, w = x.shape[1:3]
        s = size / min(h, w)
        nh, nw = max(8, round(h * s / 8) * 8), max(8, round(w * s / 8) * 8)
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=True).permute(0, 2, 3, 1).clamp(0, 1)
    return x.contiguous()


# ------------------------------------------------------------------------------------------
# methods

@dataclass
class MethodContext:
    """What a method needs besides the clip: its options (model paths, steps, ...) and a memo so
    models load once per run."""

    options: dict = field(default_factory=dict)
    device: str = "cpu"
    _memo: dict = field(default_factory=dict)

    def get(self, key: str, loader: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = loader()
        return self._memo[key]

    def need(self, key: str, method: str) -> Any:
        v = self.options.get(key)
        if v in (None, ""):
            raise ValueError(f"method {method!r} needs the option {key!r} (e.g. --set {key}=PATH)")
        return v


MethodFn = Callable[[torch.Tensor, BenchItem, int, MethodContext], torch.Tensor]
METHODS: dict[str, MethodFn] = {}


def register_method(name: str, fn: MethodFn) -> MethodFn:
    """Add an editing method to the benchmark (e.g. ``register_method("ei2", run_ei2)``)."""
    METHODS[name] = fn
    return fn


def _backbone(ctx: MethodContext, method: str):
    from ..models.sd1 import load_sd1

    path = ctx.need("checkpoint", method)
    return ctx.get("backbone", lambda: load_sd1(path, tokenizer=ctx.options.get("tokenizer") or None))


def _stack(ctx: MethodContext, method: str):
    from ..models.controlnet import load_controlnet
    from ..models.motion import load_motion_adapter
    from ..pipelines import VideoEditStack

    def build():
        bb = _backbone(ctx, method)
        mm_path = ctx.options.get("motion_module") or None
        stack = VideoEditStack(bb, motion_adapter=load_motion_adapter(mm_path) if mm_path else None,
                               motion_source=mm_path or "")
        cn = ctx.need("controlnet", method)
        stack.controlnet = load_controlnet(cn)
        stack.controlnet_source = cn
        return stack.to(ctx.device)

    return ctx.get("stack", build)


def _pnp_config(item_seed: int, ctx: MethodContext):
    from ..pipelines import PlugAndPlayConfig

    o = ctx.options
    return PlugAndPlayConfig(steps=int(o.get("steps", 20)), text_cfg=float(o.get("cfg", 7.5)),
                             image_cfg=float(o.get("image_cfg", 1.5)), seed=item_seed,
                             context_frames=int(o.get("context_frames", 16)),
                             context_overlap=int(o.get("context_overlap", 4)),
                             denoise=float(o.get("denoise", 1.0)), negative_prompt=str(o.get("negative_prompt", "")))


def run_plug_and_play(frames, item: BenchItem, seed: int, ctx: MethodContext) -> torch.Tensor:
    """EVE §3.1.3 plug-and-play: options ``checkpoint``, ``controlnet``, optional
    ``motion_module``, ``tokenizer`` (for single-file checkpoints outside ComfyUI), ``steps``,
    ``cfg``, ``image_cfg``, ``context_frames``, ``context_overlap``, ``denoise``."""
    from ..pipelines import plug_and_play_edit

    stack = _stack(ctx, "plug_and_play")
    stack.loras = []
    return plug_and_play_edit(stack, frames, item.edit_instruction, item.output_caption, _pnp_config(seed, ctx))


def run_eve(frames, item: BenchItem, seed: int, ctx: MethodContext) -> torch.Tensor:
    """EVE: plug-and-play with the FDD-aligned LoRA (option ``lora``, ``lora_strength`` = 1)."""
    from ..models.lora import read_lora
    from ..pipelines import plug_and_play_edit

    lora = ctx.get("lora", lambda: read_lora(ctx.need("lora", "eve")))
    stack = _stack(ctx, "eve")
    stack.loras = [(lora, float(ctx.options.get("lora_strength", 1.0)))]
    return plug_and_play_edit(stack, frames, item.edit_instruction, item.output_caption, _pnp_config(seed, ctx))


def run_assd(frames, item: BenchItem, seed: int, ctx: MethodContext) -> torch.Tensor:
    """ASSD: option ``t2v`` (a ModelScope / Zeroscope folder), optional ``checkpoint`` (the SD 1.x
    image model of the joint guidance; without it joint guidance is off), ``steps`` (200),
    ``cfg``, ``lr``. Source prompt = input caption, target prompt = output caption."""
    from ..assd import (
        ASSDConfig,
        ImagePrior,
        assd_edit,
        load_t2v_folder_parts,
        t2v_models,
    )
    from ..models.t2v import load_t2v_unet

    t2v = ctx.need("t2v", "assd")
    bb = _backbone(ctx, "assd") if ctx.options.get("checkpoint") else None

    def build():
        unet = load_t2v_unet(t2v)
        models = t2v_models(unet, load_t2v_folder_parts(t2v), fallback=bb, source=t2v)
        if bb is not None:
            models = models.with_image_model(ImagePrior.from_backbone(bb))
        return models

    models = ctx.get("assd_models", build)
    o = ctx.options
    cfg = ASSDConfig(steps=int(o.get("steps", 200)), lr=float(o.get("lr", 0.1)),
                     guidance_scale=float(o.get("cfg", 7.5)), seed=seed, joint_guidance=bb is not None,
                     keyframe_stride=int(o.get("keyframe_stride", 4)))
    return assd_edit(models, frames, item.input_caption or item.output_caption, item.output_caption, cfg)


def run_ei2(frames, item: BenchItem, seed: int, ctx: MethodContext) -> torch.Tensor:
    """EI²: one-shot tuning on the item's clip with its input caption, then DDIM inversion and
    sampling with the output caption. Options ``checkpoint`` (+ ``tokenizer``), ``variant``
    (``ei2`` default, or ``tune_a_video``), ``tune_steps`` (500, §5), ``lr`` (3e-5), ``steps``
    (50), ``cfg`` (7.5), ``num_frames`` (8), ``stride`` (1). Edits the frames it was tuned on."""
    from ..ei2 import EditConfig, InflationConfig, TuneConfig, ei2_edit, ei2_tune

    bb = _backbone(ctx, "ei2")
    o = ctx.options
    variant = str(o.get("variant", "ei2"))
    if variant not in ("ei2", "tune_a_video"):
        raise ValueError(f"variant: expected 'ei2' or 'tune_a_video', got {variant!r}")
    inflation = getattr(InflationConfig, variant)(seed=seed)
    tune = TuneConfig(steps=int(o.get("tune_steps", 500)), learning_rate=float(o.get("lr", 3e-5)), seed=seed)
    model, _, used = ei2_tune(bb, inflation, frames, item.input_caption or item.output_caption, tune,
                              num_frames=int(o.get("num_frames", 8)), stride=int(o.get("stride", 1)),
                              device=ctx.device)
    edit = EditConfig(steps=int(o.get("steps", 50)), cfg=float(o.get("cfg", 7.5)), seed=seed)
    return ei2_edit(bb, model, used, item.output_caption, config=edit)


def run_identity(frames, item: BenchItem, seed: int, ctx: MethodContext) -> torch.Tensor:
    """No edit: the output is the input (the metrics' reference values)."""
    return frames.clone()


register_method("plug_and_play", run_plug_and_play)
register_method("eve", run_eve)
register_method("assd", run_assd)
register_method("ei2", run_ei2)
register_method("identity", run_identity)


# ------------------------------------------------------------------------------------------
# runner and report

def _write_json(obj: Any, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(_finite(obj), fh, indent=1)
    os.replace(tmp, path)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def aggregate(results: list[dict]) -> dict:
    """Means of every metric over all items and per task (``n`` = items that have it)."""
    def mean_of(rows):
        out = {}
        for k in METRIC_KEYS:
            vals = [r["metrics"][k] for r in rows if k in r.get("metrics", {})]
            if vals:
                out[k] = float(np.mean(vals))
        out["n"] = len(rows)
        return out

    ok = [r for r in results if "error" not in r]
    tasks = sorted({r["task"] for r in ok})
    return {"all": mean_of(ok), "by_task": {t: mean_of([r for r in ok if r["task"] == t]) for t in tasks},
            "failed": len(results) - len(ok)}


def run_benchmark(items: list[BenchItem], method: str, models: MetricModels, out_dir: str, *,
                  options: dict | None = None, seed: int = 0, max_frames: int | None = None,
                  size: int | None = None, device: str = "cpu", grid_columns: int = 8,
                  keep_going: bool = False, log: Callable[[str], None] | None = None) -> dict:
    """Run ``method`` on every item with the fixed ``seed``, measure, write the outputs listed in
    the module docstring; returns the ``results.json`` content. With ``keep_going`` a failing
    item is recorded with its error and the run goes on."""
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; available: {', '.join(sorted(METHODS))}")
    if not items:
        raise ValueError("the dataset has no items")
    fn = METHODS[method]
    ctx = MethodContext(options=dict(options or {}), device=device)
    cache = EmbeddingCache()
    os.makedirs(out_dir, exist_ok=True)
    results = []
    clips: dict[str, torch.Tensor] = {}
    for n, item in enumerate(items):
        item_dir = os.path.join(out_dir, "items", item.id)
        rec: dict[str, Any] = {**asdict(item), "instruction_used": item.edit_instruction, "seed": seed}
        t0 = time.perf_counter()
        try:
            key = f"{item.clip}|{max_frames}|{size}"
            if key not in clips:
                clips[key] = load_clip_frames(item.clip, max_frames, size)
            frames = clips[key]
            out = fn(frames, item, seed, ctx)
            rec["edit_seconds"] = time.perf_counter() - t0
            res = evaluate_edit(models, frames, out.float().cpu(), item.output_caption, item.input_caption, cache=cache)
            rec.update(res)
            save_png(comparison_grid(frames, out.float().cpu(), grid_columns), os.path.join(item_dir, "grid.png"))
            rec["grid"] = os.path.relpath(os.path.join(item_dir, "grid.png"), out_dir)
            rec["frames"] = int(frames.shape[0])
            rec["size"] = [int(frames.shape[1]), int(frames.shape[2])]
        except Exception as exc:
            if not keep_going:
                raise
            rec["error"] = f"{type(exc).__name__}: {exc}"
        _write_json(rec, os.path.join(item_dir, "metrics.json"))
        results.append(rec)
        if log:
            log(json.dumps(_finite({"item": item.id, "n": n + 1, "of": len(items),
                                    **({"error": rec["error"]} if "error" in rec else rec.get("metrics", {}))})))
    agg = aggregate(results)
    summary = {"method": method, "seed": seed, "options": {k: str(v) for k, v in ctx.options.items()},
               "max_frames": max_frames, "size": size, "models": models.describe(),
               "aggregate": agg, "items": results}
    _write_json(agg, os.path.join(out_dir, "aggregate.json"))
    _write_json(summary, os.path.join(out_dir, "results.json"))
    write_html_report(summary, os.path.join(out_dir, "report.html"))
    return summary


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.4f}" if isinstance(v, float) else html.escape(str(v)))


def write_html_report(summary: dict, path: str) -> str:
    """One page: the aggregate table (overall and by task) and per item its captions, metrics
    and comparison grid (input frames over output frames)."""
    agg = summary["aggregate"]
    keys = [k for k in METRIC_KEYS if k in agg["all"] or any(k in a for a in agg["by_task"].values())]
    e = html.escape
    out = ["<!doctype html><html><head><meta charset='utf-8'>",
           f"<title>fdd eval: {e(summary['method'])}</title>",
           "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}th{background:#eee}"
           "img{max-width:100%}.err{color:#b00}</style></head><body>",
           f"<h1>Video edit benchmark: {e(summary['method'])}</h1>",
           f"<p>seed {summary['seed']}; frames {summary['max_frames'] or 'all'}; size "
           f"{summary['size'] or 'native'}; models: {e(json.dumps(summary['models']))}</p>",
           "<h2>Aggregate (means)</h2><table><tr><th>task</th><th>n</th>"
           + "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr>"]
    for name, row in [("all", agg["all"])] + sorted(agg["by_task"].items()):
        out.append(f"<tr><td>{e(name)}</td><td>{row.get('n', 0)}</td>"
                   + "".join(f"<td>{_fmt(row.get(k))}</td>" for k in keys) + "</tr>")
    out.append("</table>")
    if agg.get("failed"):
        out.append(f"<p class='err'>{agg['failed']} item(s) failed; see below.</p>")
    out.append("<h2>Items</h2>")
    for r in summary["items"]:
        out.append(f"<h3>{e(r['id'])} <small>({e(r['task'])})</small></h3>"
                   f"<p>input: {e(r['input_caption'])}<br>instruction: {e(r['instruction_used'])}<br>"
                   f"output: {e(r['output_caption'])}</p>")
        if "error" in r:
            out.append(f"<p class='err'>{e(r['error'])}</p>")
            continue
        out.append("<table><tr>" + "".join(f"<th>{e(k)}</th>" for k in r["metrics"]) + "</tr><tr>"
                   + "".join(f"<td>{_fmt(v)}</td>" for v in r["metrics"].values()) + "</tr></table>")
        out.append(f"<img src='{e(r['grid'])}' alt='input frames (top) and output frames (bottom)'>")
    out.append("</body></html>")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(out))
    os.replace(tmp, path)
    return path
