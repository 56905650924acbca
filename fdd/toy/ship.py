"""Ship a trained toy run as the pack's embedded default models, with measured model cards.

    python -m fdd.toy ship --run toy_run [--out models/toy] [--dtype fp16]

Layout written (ComfyUI model-folder categories, so the pack can register each sub-folder
with ComfyUI and the loader nodes list the files without any download):

| file | what | loads with |
|---|---|---|
| ``checkpoints/toy_sd1.safetensors`` + ``checkpoints/toy_sd1_tokenizer/`` | T2I backbone (LDM single file) and its word-level tokenizer | ``fdd.models.sd1.load_sd1`` (finds the tokenizer beside the file) |
| ``controlnet/toy_controlnet_edit.safetensors`` | edit adapter (EVE phase 1) | ``fdd.models.controlnet.load_controlnet`` |
| ``animatediff_models/toy_motion_module.safetensors`` | video adapter (AnimateDiff original keys) | ``fdd.models.motion.load_motion_adapter`` |
| ``diffusers/toy_t2v/`` | UNet3D text-to-video prior with its VAE / text encoder / tokenizer | ``fdd.models.t2v.load_t2v_unet`` |
| ``cards.json``, ``README.md`` | model cards: command, seed, steps, minutes, measured quality, VAE ceiling, floors | |

The cards' quality figures are measured on the SHIPPED files (after the dtype cast), loaded
through the pack's own loaders, with :mod:`fdd.toy.train`'s evaluators on fixed seeds; the fp32
figures of the image models are measured beside them so the cast's cost is visible.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace

import torch

from . import train as T

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED_DIR = os.path.join(ROOT, "models", "toy")
LAYOUT = {"backbone": "checkpoints/toy_sd1.safetensors", "tokenizer": "checkpoints/toy_sd1_tokenizer",
          "controlnet": "controlnet/toy_controlnet_edit.safetensors",
          "motion": "animatediff_models/toy_motion_module.safetensors", "t2v": "diffusers/toy_t2v"}
#: ComfyUI model-folder categories the shipped tree fills (registered by nodes/_runtime.py)
CATEGORIES = ("checkpoints", "controlnet", "animatediff_models", "diffusers", "loras")
#: issue 7's quality floors
FLOORS = {"backbone": {"all_correct": 0.85}, "controlnet": {"edit_accuracy": 0.80, "preservation": 0.90},
          "motion": {"attributes_constant": 0.90, "path_residual_px_median": 1.0}}


#: classifier-free guidance each card's figures are sampled with. The edit adapter's was chosen
#: on a validation seed (999; the cards use 12345), n 128, DDIM 20 steps: edit / preservation
#: 0.80 / 0.79 at 6, 0.85 / 0.82 at 4, 0.88 / 0.86 at 3 and 2, 0.88 / 0.84 at 1.5 (ControlNet
#: residuals x1.25: 0.84 / 0.83). The motion module scored alike at 2 and 4 (constant clips
#: 0.75 / 0.73 of 64); the backbone's recipe evaluates at 4.
GUIDANCE = {"backbone": 4.0, "controlnet": 2.0, "motion": 4.0, "t2v": 4.0}


def guidance(cfg_scale: float | dict | None = None) -> dict[str, float]:
    """Per-component guidance: :data:`GUIDANCE`, with one float for all or a dict of overrides."""
    if cfg_scale is None:
        return dict(GUIDANCE)
    if isinstance(cfg_scale, dict):
        unknown = set(cfg_scale) - set(GUIDANCE)
        if unknown:
            raise ValueError(f"cfg_scale: unknown components {sorted(unknown)}; expected some of {sorted(GUIDANCE)}")
        return {**GUIDANCE, **{k: float(v) for k, v in cfg_scale.items()}}
    return {k: float(cfg_scale) for k in GUIDANCE}


def toy_paths(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Paths of the toy model files under ``root``: the shipped tree (default
    :data:`SHIPPED_DIR`), a training run folder (``<run>/export``) or an export folder."""
    root = os.fspath(root or SHIPPED_DIR)
    if os.path.isdir(os.path.join(root, "checkpoints")):
        return {k: os.path.join(root, v) for k, v in LAYOUT.items()}
    exp = os.path.join(root, "export") if os.path.isdir(os.path.join(root, "export")) else root
    if not os.path.isfile(os.path.join(exp, T.EXPORT["backbone"])):
        raise FileNotFoundError(f"toy models: {root!r} is neither a shipped toy tree (checkpoints/, controlnet/, "
                                f"...) nor a toy training run / export folder (with {T.EXPORT['backbone']})")
    return {k: os.path.join(exp, T.EXPORT[k]) for k in ("backbone", "tokenizer", "controlnet", "motion", "t2v")}


class LoadedKit(T.Toolkit):
    """A :class:`fdd.toy.train.Toolkit` over already loaded modules (not a run folder)."""

    def __init__(self, tokenizer, text_encoder, vae, unet=None):
        super().__init__(out="")
        self._tok, self._te, self._vae = tokenizer, text_encoder.eval(), vae.eval()
        if unet is not None:
            self._unet = unet.eval()


def load_backbone_kit(paths: dict) -> LoadedKit:
    from fdd.models.sd1 import load_sd1

    bb = load_sd1(paths["backbone"], tokenizer=paths["tokenizer"])
    for m in (bb.unet, bb.vae, bb.text_encoder):
        m.requires_grad_(False)
    return LoadedKit(bb.tokenizer, bb.text_encoder, bb.vae, bb.unet)


def motion_denoiser(kit: LoadedKit, paths: dict):
    """``denoise(x (N, C, F, h, w), t, emb (N, L, D))``: the backbone in ``kit`` with the motion
    module file ``paths["motion"]`` (the form :func:`fdd.toy.train.eval_video` samples)."""
    from fdd.models.motion import build_motion_unet, load_motion_adapter

    mu = build_motion_unet(kit.unet, load_motion_adapter(paths["motion"]), paths["motion"]).eval()

    def denoise(x, t, e):
        return mu(x, t, encoder_hidden_states=e.repeat_interleave(x.shape[2], 0)).sample

    return denoise


def measure(paths: dict, n_image: int = 256, n_video: int = 64, cfg_scale: float | dict | None = None,
            components=("backbone", "controlnet", "motion", "t2v")) -> dict:
    """Evaluator scores of the model files in ``paths`` (see the module doc); ``cfg_scale``: see
    :func:`guidance`."""
    from fdd.models.controlnet import load_controlnet
    from fdd.models.t2v import load_t2v_unet

    kit = load_backbone_kit(paths)
    g = guidance(cfg_scale)
    cfg = T.TrainConfig(eval_samples=n_image)
    vcfg = replace(cfg, eval_samples=n_video)
    res: dict = {}
    with torch.no_grad():
        if "backbone" in components:
            bcfg = replace(cfg, cfg_scale=g["backbone"])
            res["backbone"] = T.eval_t2i(kit, kit.unet, bcfg)
            # two-object scenes (the Add task's output captions): what an edit adapter can add
            res["backbone"]["add_captions_all_correct"] = T.eval_t2i(kit, kit.unet, bcfg, task="Add")["all_correct"]
        if "controlnet" in components:
            cn = load_controlnet(paths["controlnet"]).eval()
            res["controlnet"] = T.eval_edit(kit, cn, replace(cfg, cfg_scale=g["controlnet"]))
        if "motion" in components:
            res["motion"] = T.eval_video(kit, motion_denoiser(kit, paths), replace(vcfg, cfg_scale=g["motion"]))
        if "t2v" in components:
            from diffusers import AutoencoderKL
            from transformers import CLIPTextModel, CLIPTokenizer

            d = paths["t2v"]
            u3 = load_t2v_unet(d).eval()
            tkit = LoadedKit(CLIPTokenizer.from_pretrained(os.path.join(d, "tokenizer"), local_files_only=True),
                             CLIPTextModel.from_pretrained(os.path.join(d, "text_encoder"),
                                                           local_files_only=True).float(),
                             AutoencoderKL.from_pretrained(os.path.join(d, "vae"), local_files_only=True).float())
            res["t2v"] = T.eval_video(tkit, lambda x, t, e: u3(x, t, encoder_hidden_states=e).sample,
                                      replace(vcfg, cfg_scale=g["t2v"]))
    return res


def vae_ceilings(paths: dict, n_image: int = 256, n_video: int = 64) -> dict:
    """The same evaluations on ground truth sent through the shipped VAE (``controlnet``: the
    edited frames, ``motion``: the clips): what a perfect adapter decoded by this VAE would score,
    printed beside each floor."""
    kit = load_backbone_kit(paths)
    cfg = T.TrainConfig(eval_samples=n_image)
    return {"controlnet": T.vae_ceiling_edit(kit, cfg),
            "motion": T.vae_ceiling_video(kit, replace(cfg, eval_samples=n_video))}


def floors_met(scores: dict) -> dict[str, bool]:
    out = {}
    for comp, floor in FLOORS.items():
        if comp not in scores:
            continue
        s = scores[comp]
        out[comp] = all((s[k] <= v) if k.startswith("path_residual") else (s[k] >= v) for k, v in floor.items())
    return out


def _training_record(run: str, comp: str) -> dict:
    p = os.path.join(run, comp, "result.json")
    if not os.path.isfile(p):
        return {}
    with open(p) as fh:
        r = json.load(fh)
    return {"steps": r.get("step"), "train_minutes": round(float(r.get("elapsed_s") or 0) / 60, 2),
            "seed": r.get("config", {}).get("seed"),
            **({"clips_per_batch": r.get("config", {}).get("clips_per_batch")} if comp in ("motion", "t2v")
               else {"batch": r.get("config", {}).get("batch")}),
            "lr": r.get("config", {}).get("lr"), "last_training_eval": r.get("eval")}


def _elapsed_at(run: str, comp: str, step: int) -> float | None:
    """Training seconds at ``step`` from ``RUN/<comp>/log.jsonl`` (the last record at or before
    it); None without a log."""
    p = os.path.join(run, comp, "log.jsonl")
    if not os.path.isfile(p):
        return None
    best = None
    with open(p) as fh:
        for line in fh:
            r = json.loads(line)
            if r.get("step", 0) <= step and "elapsed_s" in r:
                best = float(r["elapsed_s"])
    return best


def _recipe_end(name: str) -> int | None:
    """The step where component ``name``'s CPU recipe ends (its last stage, else its default
    steps); continuation legs start there."""
    return T.STAGES[name][-1][0] if name in T.STAGES else T.DEFAULT_STEPS.get(name)


def _command(run: str, name: str, rec: dict) -> tuple[str, dict]:
    """The card's training command for component ``name``, and, when the run went past the
    recipe, the minutes of the CPU recipe and of each continuation leg it reached
    (:data:`fdd.toy.train.CONTINUATIONS`), split at the legs' last steps read from the log."""
    cmd = f"python -m fdd.toy train {name} --out RUN --seed {rec.get('seed', 0)}" + \
        (" (after text, vae)" if name in ("unet", "t2v") else " (after text, vae, unet)")
    if name in T.STAGES:
        cmd += (f"; steps {T.DEFAULT_STEPS[name]} at the default lr, then the stages (total steps, lr, "
                f"offset noise) {T.STAGES[name]}")
    recipe_end = _recipe_end(name)
    steps = rec.get("steps") or 0
    if recipe_end is None or steps <= recipe_end or name not in T.CONTINUATIONS:
        return cmd, {}
    cpu = _elapsed_at(run, name, recipe_end)
    legs, start, t_start = [], recipe_end, cpu
    for leg in T.CONTINUATIONS[name]:
        if steps <= start:
            break
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in leg["settings"].items())
        cmd += f"; then on {leg['where']}: " + "; ".join(f"{flags} --steps {n} --lr {lr}" for n, lr in leg["stages"])
        end = min(steps, leg["stages"][-1][0])
        t_end = _elapsed_at(run, name, end) if end < steps else (rec.get("train_minutes") or 0.0) * 60
        legs.append({"where": leg["where"], "to_step": end,
                     "minutes": None if t_end is None or t_start is None else round((t_end - t_start) / 60, 2)})
        start, t_start = end, t_end
    return cmd, ({} if cpu is None else {"recipe_minutes_cpu": round(cpu / 60, 2)}) | {"continuations": legs}


def _write_tree(run: str, stage: str, dtype: torch.dtype) -> dict[str, str]:
    paths = {k: os.path.join(stage, v) for k, v in LAYOUT.items()}
    T.export_backbone(run, dtype=dtype, dest=paths["backbone"])
    shutil.copytree(os.path.join(run, "text", "tokenizer"), paths["tokenizer"])
    T.export_controlnet(run, dtype=dtype, dest=paths["controlnet"])
    T.export_motion(run, dtype=dtype, dest=paths["motion"])
    os.makedirs(os.path.dirname(paths["t2v"]), exist_ok=True)
    T.export_t2v(run, dtype=dtype, dest=paths["t2v"])
    return paths


def _fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _cfg_text(cfg) -> str:
    return ", ".join(f"{k} {v}" for k, v in cfg.items()) if isinstance(cfg, dict) else str(cfg)


def _minutes_split(rec: dict, recipe_where: str = "") -> str:
    """``"<m> of the recipe<where>, <m> continuing to step <n> on <where>, ..."`` for a card
    record with ``recipe_minutes_cpu`` and ``continuations`` (see :func:`_command`)."""
    return ", ".join([f"{rec['recipe_minutes_cpu']} of the recipe{recipe_where}"]
                     + [f"{c['minutes']} continuing to step {c['to_step']} on {c['where']}"
                        for c in rec.get("continuations", [])])


def write_cards(folder: str, cards: dict) -> None:
    with open(os.path.join(folder, "cards.json"), "w") as fh:
        json.dump(cards, fh, indent=1, default=str)
    lines = ["# Toy-world models (the pack's embedded default)", "",
             "Trained on 2 CPU cores by `python -m fdd.toy train all`"
             + (" (then continued where a card says so)"
                if any(c.get("continuations") for c in cards["models"].values()) else "")
             + " and shipped by `python -m fdd.toy ship`; "
             "every figure below was measured on these files by `fdd.toy.ship.measure` "
             f"(image models on {cards['settings']['n_image']} samples, video models on "
             f"{cards['settings']['n_video']} clips, DDIM {cards['settings']['sample_steps']} steps, "
             f"CFG {_cfg_text(cards['settings']['cfg_scale'])}; frames read by `fdd.toy.evaluate.read_frame`"
             f" ({cards['settings'].get('reader', 'first reader')})). Not real-world models: 32x32 frames of one coloured "
             "shape moving on a white or black background, captions from a small word-level vocabulary.", ""]
    for comp, card in cards["models"].items():
        lines += [f"## {comp}: `{card['file']}`", "", card["what"], "",
                  f"- command: `{card['command']}`",
                  f"- seed {card.get('seed')}, {card.get('steps')} steps, "
                  + (f"{card['clips_per_batch']} clips per step" if "clips_per_batch" in card
                     else f"batch {card.get('batch')}")
                  + f" (last stage), lr {card.get('lr')} (last stage), {card.get('train_minutes')} training minutes "
                  + (f"({_minutes_split(card, ' on 2 CPU cores')}) " if "recipe_minutes_cpu" in card else "")
                  + "(evaluations excluded)",
                  f"- stored as {cards['settings']['dtype']}, {card['bytes'] / 1e6:.2f} MB"]
        for part, key in (("VAE", "vae_training"), ("VAE decoder fine-tune (encoder frozen)", "decoder_training")):
            if card.get(key):
                r = card[key]
                lines.append(f"- {part}: {r.get('steps')} steps, lr {r.get('lr')} (last stage), "
                             f"{r.get('train_minutes')} training minutes"
                             + (f" ({_minutes_split(r)})" if "recipe_minutes_cpu" in r else "")
                             + (f"; command: `{r['command']}`" if r.get("command") else ""))
        if card.get("quality"):
            q = {k: v for k, v in card["quality"].items() if not isinstance(v, dict)}
            lines.append("- quality (shipped file): " + ", ".join(f"{k} {_fmt(v)}" for k, v in q.items()))
            if "add_captions_all_correct" in q:
                lines.append("  (add_captions_all_correct: all_correct on the Add task's output captions, two objects "
                             "such as 'a red circle and a blue square on a white background', sampled by the backbone "
                             "alone: the yardstick for the edit adapter's Add row, which draws the same scenes "
                             "through this backbone)")
            per_task = card["quality"].get("per_task_fully_right")
            if per_task:
                lines.append("- fully right per task (shipped file): "
                             + ", ".join(f"{k} {_fmt(v)}" for k, v in per_task.items()))
        if card.get("quality_fp32"):
            q = {k: v for k, v in card["quality_fp32"].items() if not isinstance(v, dict)}
            lines.append("- quality (fp32 before the cast): " + ", ".join(f"{k} {_fmt(v)}" for k, v in q.items()))
        if card.get("vae_ceiling"):
            q = {k: v for k, v in card["vae_ceiling"].items() if not isinstance(v, dict)}
            lines.append("- ceiling (ground truth through the shipped VAE, scored alike): "
                         + ", ".join(f"{k} {_fmt(v)}" for k, v in q.items()))
        if comp in cards.get("floors_met", {}):
            lines.append(f"- floor {FLOORS[comp]}: {'met' if cards['floors_met'][comp] else 'NOT met'}")
        lines.append("")
    with open(os.path.join(folder, "README.md"), "w") as fh:
        fh.write("\n".join(lines))


def _size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def ship(run: str, out: str = SHIPPED_DIR, dtype: torch.dtype = torch.float16, n_image: int = 256,
         n_video: int = 64, cfg_scale: float | dict | None = None, compare_fp32: bool = True) -> dict:
    """Write the shipped tree from ``run`` into ``out`` (staged, then renamed into place) and its
    cards; returns the cards."""
    t0 = time.time()
    out = os.path.abspath(out)
    stage = out + ".partial"
    shutil.rmtree(stage, ignore_errors=True)
    paths = _write_tree(run, stage, dtype)
    scores = measure(paths, n_image, n_video, cfg_scale)
    ceilings = vae_ceilings(paths, n_image, n_video)
    fp32 = {}
    if compare_fp32 and dtype != torch.float32:
        fp32 = measure(toy_paths(run), n_image, n_video, cfg_scale, components=("backbone", "controlnet"))
    what = {"backbone": "UNet2DConditionModel (32, 64) + AutoencoderKL (32, 64; 32x32 RGB -> 4x16x16) + frozen "
                        "random CLIPTextModel (64 wide, 2 layers, whitened), one LDM single file; tokenizer beside it.",
            "controlnet": "ControlNet from the backbone UNet, hint encoder (16, 32): input frame (0..1) + "
                          "instruction to the adapter, output caption to the backbone (EVE phase 1).",
            "motion": "AnimateDiff MotionAdapter (32, 64), no mid block, trained on 8-frame clips with the "
                      "backbone frozen.",
            "t2v": "UNet3DConditionModel (32, 64) text-to-video prior with the backbone's VAE and text encoder "
                   "(diffusers folder)."}
    train_name = {"backbone": "unet", "controlnet": "controlnet", "motion": "motion", "t2v": "t2v"}
    models = {}
    for comp in ("backbone", "controlnet", "motion", "t2v"):
        rec = _training_record(run, train_name[comp])
        command, minutes = _command(run, train_name[comp], rec)
        models[comp] = {"file": LAYOUT[comp], "what": what[comp], "command": command, **rec, **minutes,
                        "bytes": _size(paths[comp]), "quality": scores.get(comp),
                        "quality_fp32": fp32.get(comp), "vae_ceiling": ceilings.get(comp)}
    vae = _training_record(run, "vae")
    models["backbone"]["vae_training"] = vae
    dec = _training_record(run, "decoder")  # {} when the run has none
    if dec:
        command, minutes = _command(run, "decoder", dec)
        dec = {"command": command, **dec, **minutes} if minutes else dec
    models["backbone"]["decoder_training"] = dec
    cards = {"settings": {"dtype": str(dtype).replace("torch.", ""), "n_image": n_image, "n_video": n_video,
                          "cfg_scale": guidance(cfg_scale), "reader": "blur_robust", "sample_steps": T.TrainConfig().sample_steps,
                          "eval_seed": 12345},
             "models": models, "floors": FLOORS, "floors_met": floors_met(scores),
             "total_bytes": _size(stage), "ship_seconds": round(time.time() - t0, 1)}
    write_cards(stage, cards)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(stage, out)
    return cards


#: which shipped card holds each training component's record in :func:`unpack`
_CARD_OF = {"unet": ("backbone", None), "vae": ("backbone", "vae_training"),
            "decoder": ("backbone", "decoder_training"), "controlnet": ("controlnet", None),
            "motion": ("motion", None), "t2v": ("t2v", None)}


def _card_result(name: str, rec: dict, source: str) -> dict:
    """A ``result.json`` (what :func:`fdd.toy.train.train` writes) rebuilt from a card's record."""
    size_key = "clips_per_batch" if name in ("motion", "t2v") else "batch"
    config = {"seed": rec.get("seed", 0), size_key: rec.get(size_key), "lr": rec.get("lr")}
    return {"component": name, "config": config, "step": rec.get("steps") or 0,
            "elapsed_s": round(float(rec.get("train_minutes") or 0.0) * 60, 2), "loss": None,
            "eval": rec.get("last_training_eval"), "unpacked_from": source}


def _card_log(name: str, rec: dict) -> list[dict]:
    """``log.jsonl`` records at the recipe's end, each continuation leg's end and the card's last
    step (training seconds), so :func:`_command` splits the minutes of a re-shipped card as the
    card did, and of a leg added after unpacking."""
    out = []
    if rec.get("recipe_minutes_cpu") is not None:
        t = float(rec["recipe_minutes_cpu"]) * 60
        out.append({"step": _recipe_end(name), "elapsed_s": round(t, 2), "unpacked": True})
        for leg in rec.get("continuations", []):
            if leg.get("minutes") is None:
                break
            t += float(leg["minutes"]) * 60
            out.append({"step": leg["to_step"], "elapsed_s": round(t, 2), "unpacked": True})
    if rec.get("steps") and (not out or out[-1]["step"] != rec["steps"]):
        out.append({"step": rec["steps"], "elapsed_s": round(float(rec.get("train_minutes") or 0.0) * 60, 2),
                    "unpacked": True})
    return out


def unpack(models: str | os.PathLike | None, run: str | os.PathLike) -> dict:
    """Turn a shipped toy tree (``models``; None: the pack's) back into a training run folder
    ``run`` that ``python -m fdd.toy train COMPONENT --out RUN --steps N`` continues and
    ``python -m fdd.toy ship --run RUN`` ships again with the same cards' training records.

    Written per component: ``final.pt`` (the shipped weights in fp32: the shipped dtype's
    values, so nothing is recovered that the cast dropped), ``state.pt`` for resuming (step
    and training seconds from the card; the shipped weights as both the raw and the EMA weights,
    since only the EMA average was shipped; no optimizer moments, so AdamW starts them afresh),
    ``result.json`` and ``log.jsonl`` rebuilt from the card (marked ``unpacked``), and the fp32
    exports (``RUN/export``). The ``vae`` component (its encoder defines the latent space) gets
    no state: retraining it would invalidate everything trained on it. Refuses a ``run`` that
    already holds files. Returns ``{"run", "components", "source"}``."""
    from diffusers import UNetMotionModel

    from fdd.models.controlnet import load_controlnet
    from fdd.models.motion import load_motion_adapter
    from fdd.models.sd1 import load_sd1
    from fdd.models.t2v import load_t2v_unet

    source = os.path.abspath(os.fspath(models or SHIPPED_DIR))
    paths = toy_paths(source)
    if not os.path.isdir(os.path.join(source, "checkpoints")):
        raise ValueError(f"models: {source!r} is not a shipped toy tree (checkpoints/, controlnet/, ...); "
                         "a training run needs no unpacking")
    cards_path = os.path.join(source, "cards.json")
    if not os.path.isfile(cards_path):
        raise FileNotFoundError(f"models: {source!r} has no cards.json (the training records unpack rebuilds)")
    with open(cards_path) as fh:
        cards = json.load(fh)["models"]
    final = os.path.abspath(os.fspath(run))
    if os.path.isdir(final) and os.listdir(final):
        raise FileExistsError(f"run: {final!r} already holds files; unpack into a new or empty folder")
    run = final + ".partial"  # staged, renamed into place when complete
    shutil.rmtree(run, ignore_errors=True)
    bb = load_sd1(paths["backbone"], tokenizer=paths["tokenizer"])
    unet = bb.unet.float()
    adapter = load_motion_adapter(paths["motion"])
    weights = {"unet": unet.state_dict(), "vae": bb.vae.float().state_dict(),
               "decoder": bb.vae.state_dict(), "controlnet": load_controlnet(paths["controlnet"]).state_dict(),
               "motion": adapter.state_dict(), "t2v": load_t2v_unet(paths["t2v"]).state_dict()}
    # the module train_loop resumes: the motion module trains inside the inflated backbone
    trained = dict(weights, motion=UNetMotionModel.from_unet2d(unet, adapter).state_dict())
    os.makedirs(os.path.join(run, "text"), exist_ok=True)
    shutil.copytree(paths["tokenizer"], os.path.join(run, "text", "tokenizer"))
    te = bb.text_encoder.float()
    T._atomic_save({"model": te.state_dict(), "vocab_size": te.config.vocab_size},
                   os.path.join(run, "text", "text_encoder.pt"))
    for name, sd in weights.items():
        card, sub = _CARD_OF[name]
        rec = cards[card].get(sub, {}) if sub else cards[card]
        d = os.path.join(run, name)
        os.makedirs(d, exist_ok=True)
        T._atomic_save(sd, os.path.join(d, "final.pt"))
        result = _card_result(name, rec, source)
        if name != "vae":
            model_sd = trained[name]
            T._atomic_save({"model": model_sd, "opt": None,
                            "ema": {k: v for k, v in model_sd.items() if v.is_floating_point()},
                            "step": result["step"], "elapsed_s": result["elapsed_s"],
                            "config": result["config"] | {"unpacked_from": source}}, os.path.join(d, "state.pt"))
        with open(os.path.join(d, "result.json"), "w") as fh:
            json.dump(result, fh, indent=1)
        with open(os.path.join(d, "log.jsonl"), "w") as fh:
            for r in _card_log(name, rec):
                fh.write(json.dumps(r) + "\n")
    T.export_backbone(run)
    T.export_controlnet(run)
    T.export_motion(run)
    T.export_t2v(run)
    if os.path.isdir(final):
        os.rmdir(final)
    os.replace(run, final)
    return {"run": final, "components": sorted(weights), "source": source}
