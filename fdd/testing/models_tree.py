"""Write every tiny model, in its real on-disk format and under the real file name the
shipped workflows use, into a ComfyUI-style models tree.

    python -m fdd.testing models --root DIR

Layout (folders are ComfyUI's model folder names):

    checkpoints/v1-5-pruned-emaonly.safetensors     SD 1.x LDM single file
    controlnet/control_v11e_sd15_ip2p.safetensors   ControlNet LDM single file (control_model.*)
    animatediff_models/mm_sd_v15_v2.ckpt            AnimateDiff v2 original format (weights-only pickle)
    loras/fdd_demo_lora.safetensors                 kohya LoRA (lora_unet_*, alpha)
    diffusers/tiny-sd15/                            diffusers SD pipeline folder
    diffusers/tiny-zeroscope/                       text-to-video pipeline folder (unet/ = UNet3D,
                                                    vae/, text_encoder/, tokenizer/, scheduler/)
    tokenizers/sd1_tokenizer/                       CLIP tokenizer folder (for use outside ComfyUI)
    fdd_metrics/clip/clip-vit-large-patch14/        transformers CLIP folder (metrics)
    fdd_metrics/pickscore/PickScore_v1/             PickScore (CLIP folder format)
    fdd_metrics/viclip/ViCLIP-InternVid-10M-FLT/    ViClip-InternVid-10M-FLT.pth + BPE tokenizer files
    dinov2/tiny-dinov2/                             DINOv2 (transformers folder; FDD discriminators)
    fdd_datasets/tiny-edit/                         FDD unsupervised dataset (clips + manifest)
    loras/fdd_eve_aligned_tiny.safetensors          a LoRA aligned by 2 FDD iterations (kohya)
"""

from __future__ import annotations

import json
import os
import shutil

import torch

from . import tiny
from .fdd_fixtures import FDD_FILES

FILES = {
    "checkpoint": ("checkpoints", "v1-5-pruned-emaonly.safetensors"),
    "controlnet": ("controlnet", "control_v11e_sd15_ip2p.safetensors"),
    "motion": ("animatediff_models", "mm_sd_v15_v2.ckpt"),
    "lora": ("loras", "fdd_demo_lora.safetensors"),
    "sd_diffusers": ("diffusers", "tiny-sd15"),
    "t2v": ("diffusers", "tiny-zeroscope"),
    "tokenizer": ("tokenizers", "sd1_tokenizer"),
    "metric_clip": ("fdd_metrics", "clip/clip-vit-large-patch14"),
    "metric_pickscore": ("fdd_metrics", "pickscore/PickScore_v1"),
    "metric_viclip": ("fdd_metrics", "viclip/ViCLIP-InternVid-10M-FLT"),
    # written by fdd.testing.fdd_fixtures.write_fdd_tree
    **FDD_FILES,
}

_STAMP = ".fdd-tiny-models-v3"


def model_paths(root: str | os.PathLike) -> dict[str, str]:
    root = os.fspath(root)
    return {k: os.path.join(root, d, n) for k, (d, n) in FILES.items()}


def _random_lora_layers(unet, rank: int = 4, alpha: float = 4.0, seed: int = 0):
    from ..models.lora import LoraLayer

    g = torch.Generator().manual_seed(seed + 7)
    layers = {}
    for name, mod in unet.named_modules():
        if name.endswith(("attn1.to_q", "attn1.to_v", "attn2.to_q", "attn2.to_v")) and isinstance(mod, torch.nn.Linear):
            down = torch.randn(rank, mod.in_features, generator=g) * 0.1
            up = torch.randn(mod.out_features, rank, generator=g) * 0.1
            layers[name] = LoraLayer(down=down, up=up, alpha=alpha)
    return layers


def write_models_tree(root: str | os.PathLike, seed: int = 0, force: bool = False) -> dict[str, str]:
    """Write the tiny models tree under ``root`` (skipped when already written with this
    version, unless ``force``). Returns the paths by kind (see :data:`FILES`)."""
    from ..models.lora import save_kohya_lora
    from ..models.ldm_formats import save_ldm_controlnet, save_ldm_sd1_checkpoint
    from ..models.motion_formats import save_animatediff_original

    root = os.fspath(root)
    paths = model_paths(root)
    stamp = os.path.join(root, _STAMP)
    if not force and os.path.isfile(stamp) and all(os.path.exists(p) for p in paths.values()):
        from .fdd_fixtures import write_fdd_tree

        write_fdd_tree(root, paths)  # idempotent, own stamp
        return paths
    for key, path in paths.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
    unet = tiny.tiny_unet(seed)
    vae = tiny.tiny_vae(seed)
    te = tiny.tiny_text_encoder(seed)
    save_ldm_sd1_checkpoint(paths["checkpoint"], unet, vae, te)
    save_ldm_controlnet(paths["controlnet"], tiny.tiny_controlnet(unet, seed))
    save_animatediff_original(paths["motion"], tiny.tiny_motion_adapter(seed, mid_block=True))
    save_kohya_lora(paths["lora"], _random_lora_layers(unet, seed=seed),
                    metadata={"fdd_note": "random tiny LoRA for tests"})
    tok_dir = tiny.write_tiny_tokenizer(paths["tokenizer"])
    sd_dir = paths["sd_diffusers"]
    shutil.rmtree(sd_dir, ignore_errors=True)
    unet.save_pretrained(os.path.join(sd_dir, "unet"))
    vae.save_pretrained(os.path.join(sd_dir, "vae"))
    te.save_pretrained(os.path.join(sd_dir, "text_encoder"))
    shutil.copytree(tok_dir, os.path.join(sd_dir, "tokenizer"))
    with open(os.path.join(sd_dir, "model_index.json"), "w") as fh:
        json.dump({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"],
                   "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": ["transformers", "CLIPTokenizer"]}, fh, indent=1)
    t2v_dir = paths["t2v"]
    shutil.rmtree(t2v_dir, ignore_errors=True)
    tiny.tiny_unet3d(seed).save_pretrained(os.path.join(t2v_dir, "unet"))
    # the ModelScope / Zeroscope layout; the same VAE as the SD checkpoint, so the T2V prior and
    # the image model share one latent space (ASSD joint guidance requires it)
    vae.save_pretrained(os.path.join(t2v_dir, "vae"))
    te.save_pretrained(os.path.join(t2v_dir, "text_encoder"))
    shutil.copytree(tok_dir, os.path.join(t2v_dir, "tokenizer"))
    os.makedirs(os.path.join(t2v_dir, "scheduler"))
    with open(os.path.join(t2v_dir, "scheduler", "scheduler_config.json"), "w") as fh:
        json.dump({"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                   "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
                   "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}, fh, indent=1)
    with open(os.path.join(t2v_dir, "model_index.json"), "w") as fh:
        json.dump({"_class_name": "TextToVideoSDPipeline", "unet": ["diffusers", "UNet3DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"]},
                  fh, indent=1)
    from .metric_models import write_metric_models

    write_metric_models(os.path.join(root, "fdd_metrics"), seed)
    from .fdd_fixtures import write_fdd_tree

    write_fdd_tree(root, paths, force=force)  # needs the checkpoint, ControlNet, motion module, tokenizer
    with open(stamp, "w") as fh:
        fh.write("ok\n")
    return paths


def write_extra_model_paths(yaml_path: str | os.PathLike, models_root: str | os.PathLike,
                            custom_nodes_dir: str | os.PathLike | None = None) -> str:
    """An ``extra_model_paths.yaml`` that adds the tiny models tree (and optionally a folder of
    custom node packs) to a ComfyUI started with ``--extra-model-paths-config``."""
    lines = ["fdd_tiny_models:", f"  base_path: {os.path.abspath(models_root)}"]
    for folder in ("checkpoints", "controlnet", "loras", "diffusers", "animatediff_models", "fdd_metrics",
                   "fdd_ei2", "dinov2", "fdd_datasets"):
        lines.append(f"  {folder}: {folder}")
    if custom_nodes_dir is not None:
        lines.append(f"  custom_nodes: {os.path.abspath(custom_nodes_dir)}")
    yaml_path = os.fspath(yaml_path)
    with open(yaml_path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return yaml_path
