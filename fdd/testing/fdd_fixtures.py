"""Tiny FDD fixtures in their real on-disk formats: a DINOv2 transformers folder, an
unsupervised editing dataset (clips + JSON Lines / CSV manifest), a tiny alignment config and
an aligned LoRA produced by the real trainer.

    write_fdd_tree(models_root, models)   # models = fdd.testing.models_tree.write_models_tree(models_root)

adds to the ComfyUI models tree::

    dinov2/tiny-dinov2/                       config.json, model.safetensors (hub key names),
                                              preprocessor_config.json
    fdd_datasets/tiny-edit/                   manifest.jsonl, manifest.csv, clips/ (frame folders + mp4)
    loras/fdd_eve_aligned_tiny.safetensors    kohya LoRA from a 2-iteration FDD run
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch

FDD_FILES = {
    "dino": ("dinov2", "tiny-dinov2"),
    "dataset": ("fdd_datasets", "tiny-edit"),
    "aligned_lora": ("loras", "fdd_eve_aligned_tiny.safetensors"),
}
_STAMP = ".fdd-tiny-fdd-v1"

#: records of the tiny dataset: one per Emu Edit task (§4.0.2)
TINY_RECORDS = [
    ("Global", "make it snowy", "a red ball and a blue square in the snow"),
    ("Local", "turn the red ball green", "a green ball and a blue square moving"),
    ("Add", "add a yellow star", "a red ball, a blue square and a yellow star"),
    ("Remove", "remove the blue square", "a red ball moving on a pale background"),
    ("Background", "make the background black", "a red ball and a blue square on black"),
    ("Texture", "make the ball striped", "a striped ball and a blue square"),
    ("Style", "make it a pencil sketch", "a pencil sketch of a ball and a square"),
]


def fdd_paths(root: str | os.PathLike) -> dict[str, str]:
    root = os.fspath(root)
    return {k: os.path.join(root, d, n) for k, (d, n) in FDD_FILES.items()}


def write_tiny_dinov2(folder: str | os.PathLike, seed: int = 0, hidden: int = 32, layers: int = 2,
                      patch: int = 8, image_size: int = 64, new_key_names: bool = False) -> str:
    """A random ViT DINOv2 written like the ``facebook/dinov2-small`` hub folder: ``config.json``
    (model_type dinov2), ``model.safetensors`` with the hub's key names
    (``attention.attention.query`` ...; transformers 5's ``q_proj`` names with
    ``new_key_names``) and ``preprocessor_config.json`` (ImageNet mean / std)."""
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed + 11)
    cfg = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 16),
                       mlp_ratio=2, patch_size=patch, image_size=image_size, layerscale_value=1.0)
    model = Dinov2Model(cfg).eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if not new_key_names:
        ren = ((".attention.q_proj.", ".attention.attention.query."),
               (".attention.k_proj.", ".attention.attention.key."),
               (".attention.v_proj.", ".attention.attention.value."),
               (".attention.o_proj.", ".attention.output.dense."))
        out = {}
        for k, v in sd.items():
            for a, b in ren:
                k = k.replace(a, b)
            out[k] = v
        sd = out
    save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    d = cfg.to_dict()
    d["architectures"] = ["Dinov2Model"]
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(d, fh, indent=1)
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as fh:
        json.dump({"image_processor_type": "BitImageProcessor", "image_mean": [0.485, 0.456, 0.406],
                   "image_std": [0.229, 0.224, 0.225], "crop_size": {"height": 224, "width": 224}}, fh, indent=1)
    return folder


def write_tiny_dataset(folder: str | os.PathLike, num_clips: int = 3, frames: int = 8, size: int = 32,
                       mp4: bool = True, seed: int = 0) -> str:
    """Clips of moving shapes (frame folders of PNGs, the last one an mp4 when ``mp4``) and a
    manifest in both formats (``manifest.jsonl``, ``manifest.csv``): each clip gets records
    cycling through the seven tasks (``num_clips`` records in all)."""
    from PIL import Image

    from .clip import moving_shapes_clip, write_video

    folder = os.fspath(folder)
    os.makedirs(os.path.join(folder, "clips"), exist_ok=True)
    rows = []
    for i in range(num_clips):
        clip = moving_shapes_clip(frames, size, size, seed=seed + i)
        if mp4 and i == num_clips - 1:
            name = f"clips/clip_{i:03d}.mp4"
            write_video(clip, os.path.join(folder, name), fps=8)
        else:
            name = f"clips/clip_{i:03d}"
            os.makedirs(os.path.join(folder, name), exist_ok=True)
            arr = (clip.numpy() * 255).round().astype(np.uint8)
            for f, img in enumerate(arr):
                Image.fromarray(img).save(os.path.join(folder, name, f"{f:04d}.png"))
        task, instruction, caption = TINY_RECORDS[i % len(TINY_RECORDS)]
        rows.append({"clip": name, "instruction": instruction, "output_caption": caption, "task": task})
    write_manifest(folder, rows)
    return folder


def write_manifest(folder: str, rows: list[dict], jsonl: str = "manifest.jsonl", csv_name: str = "manifest.csv") -> None:
    import csv

    with open(os.path.join(folder, jsonl), "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(folder, csv_name), "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_tiny_lora_dataset(folder: str | os.PathLike, num: int = 2) -> str:
    """A §4.4 edit+lora dataset: input caption, instruction, output caption, task; no images."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    rows = [{"input_caption": "a toy robot on a table", "instruction": "put the robot on the beach",
             "output_caption": "a toy robot on a beach", "task": "Background"},
            {"input_caption": "a line-art cat", "instruction": "add a hat",
             "output_caption": "a line-art cat wearing a hat", "task": "Add"}][:num]
    write_manifest(folder, rows)
    return folder


def tiny_config(models: dict, dino: str, dataset: str, output_dir: str, **overrides):
    """An :class:`~fdd.distill.FDDConfig` for the tiny models: 4 frames of 32x32 (8x8 latents),
    k = 2, global batch 2, 2-step teacher samples, small heads, no checkpointing of steps."""
    from ..distill.config import FDDConfig

    kw = dict(backbone=models["checkpoint"], tokenizer=models["tokenizer"], controlnet=models["controlnet"],
              motion_module=models["motion"], dino=dino, dataset=dataset, output_dir=output_dir,
              num_frames=4, height=32, width=32, iterations_sds=1, iterations_adv=1, global_batch=2,
              micro_batch=1, lr=1e-3, d_lr=1e-3, lora_rank=4, k_steps=2, teacher_sample_steps=2,
              dino_resolution=32, disc_dim=32, disc_heads=2, gradient_checkpointing=False,
              checkpoint_every=0, seed=0)
    kw.update(overrides)
    return FDDConfig(**kw).validate()


def write_tiny_aligned_lora(models_root: str | os.PathLike, models: dict) -> str:
    """Run a 2-iteration FDD alignment (1 SDS + 1 adversarial) on the tiny tree (``models``: its
    paths, :func:`fdd.testing.models_tree.model_paths`) and export its LoRA to
    ``loras/fdd_eve_aligned_tiny.safetensors`` (what the EVE workflow loads)."""
    import tempfile

    from ..distill.trainer import train

    root = os.fspath(models_root)
    paths = fdd_paths(root)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = tiny_config(models, paths["dino"], paths["dataset"], tmp, lora_name="aligned.safetensors",
                          lr=1e-2)
        res = train(cfg, log=None)
        os.makedirs(os.path.dirname(paths["aligned_lora"]), exist_ok=True)
        shutil.copyfile(res.lora_path, paths["aligned_lora"])
    return paths["aligned_lora"]


def write_fdd_tree(models_root: str | os.PathLike, models: dict, force: bool = False) -> dict[str, str]:
    """Add the FDD fixtures (DINOv2 folder, dataset, aligned LoRA) to a tiny models tree that
    :func:`~fdd.testing.models_tree.write_models_tree` already wrote (``models``: its paths).
    Skipped when present."""
    root = os.fspath(models_root)
    paths = fdd_paths(root)
    stamp = os.path.join(root, _STAMP)
    if not force and os.path.isfile(stamp) and all(os.path.exists(p) for p in paths.values()):
        return paths
    shutil.rmtree(paths["dino"], ignore_errors=True)
    write_tiny_dinov2(paths["dino"])
    shutil.rmtree(paths["dataset"], ignore_errors=True)
    write_tiny_dataset(paths["dataset"], num_clips=3, frames=8, size=32)
    write_tiny_aligned_lora(root, models)
    with open(stamp, "w") as fh:
        fh.write("ok\n")
    return paths
