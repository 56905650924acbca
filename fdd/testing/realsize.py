"""SD 1.5-architecture models with random weights at FULL size, in the real on-disk formats and
under the real file names, for measuring the pack at real scale (time, GPU memory) without
downloading anything.

    python -m fdd.testing.realsize --root /tmp/fdd_scale --scale full --device cuda
    python -m fdd.testing.realsize --counts            # parameter counts on the meta device

Layout under ``root`` (ComfyUI model folder names, as :mod:`fdd.testing.models_tree`)::

    checkpoints/v1-5-pruned-emaonly.safetensors     LDM single file (UNet + VAE + CLIP text), fp16
    controlnet/control_v11e_sd15_ip2p.safetensors   LDM ControlNet (control_model.*), fp16
    animatediff_models/mm_sd_v15_v2.ckpt            original AnimateDiff v2 (weights-only pickle), fp32
    tokenizers/sd1_tokenizer/                       the tiny character-level CLIP tokenizer
                                                    (ids < 514 and 49406 / 49407: valid for the
                                                    real 49408-token text encoder)
    dinov2/dinov2-small/                            DINOv2 ViT-S/14 transformers folder (FDD discriminators)
    fdd_datasets/scale-edit/                        one 8-frame clip (PNG frames) + manifest (FDD)

Sizes at ``scale="full"``: the real ``v1-5-pruned-emaonly.safetensors`` is fp32 (4.27 GB); its
fp16 twin (2.13 GB) is what is written here under the real name (the loaders read both the same
way). ``control_v11e_sd15_ip2p.safetensors`` is fp32 (1.45 GB) upstream, fp16 (0.72 GB) in the
widely used fp16 repack, which is what is written. ``mm_sd_v15_v2.ckpt`` is fp32 (1.82 GB)
upstream and is written fp32. Each dtype is an argument of :func:`write_realsize_tree`.

``scale="small"``: the same kinds of architecture (four UNet / VAE levels, attention on the
first three, two resnets per level, mid-block motion module, 8-conv hint encoder, 8x VAE) with
tiny channels, for CPU tests of the same code paths.

Models are built directly on the given device (``torch.device`` context), so writing the full
set on a GPU takes seconds; on the CPU it takes a minute or more.
"""

from __future__ import annotations

import json
import os
import time

import torch

# --------------------------------------------------------------------------------------------
# SD 1.5 configurations (literal values; sources named per dict)

#: runwayml/stable-diffusion-v1-5 ``unet/config.json`` (UNet2DConditionModel, 859,520,964 params)
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, norm_num_groups=32, act_fn="silu", center_input_sample=False,
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, norm_eps=1e-5,
)

#: runwayml/stable-diffusion-v1-5 ``vae/config.json`` (AutoencoderKL, 83,653,863 params)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, act_fn="silu",
    scaling_factor=0.18215,
)

#: openai/clip-vit-large-patch14 text tower = runwayml/stable-diffusion-v1-5 ``text_encoder/config.json``
#: (CLIPTextModel, 123,060,480 params); special ids as ComfyUI's sd1_tokenizer (49406 / 49407)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)

#: lllyasviel/control_v11e_sd15_ip2p ``config.json`` (ControlNetModel, 361,278,086 params)
SD15_CONTROLNET = dict(
    in_channels=4, conditioning_channels=3,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, norm_num_groups=32, conditioning_embedding_out_channels=(16, 32, 96, 256),
    flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1, norm_eps=1e-5,
)

#: guoyww/animatediff-motion-adapter-v1-5-2 ``config.json`` (MotionAdapter of mm_sd_v15_v2.ckpt)
ANIMATEDIFF_V2 = dict(
    block_out_channels=(320, 640, 1280, 1280), motion_layers_per_block=2,
    motion_transformer_layers_per_block=1, motion_mid_block_layers_per_block=1,
    motion_transformer_layers_per_mid_block=1, motion_num_attention_heads=8, motion_norm_num_groups=32,
    motion_max_seq_length=32, use_motion_mid_block=True,
)

#: facebook/dinov2-small ``config.json`` (Dinov2Model ViT-S/14, ~22M params)
DINOV2_SMALL = dict(
    hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
    image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6, hidden_act="gelu",
)


def _small(cfg: dict, **kw) -> dict:
    out = dict(cfg)
    out.update(kw)
    return out


#: the same architecture kinds with tiny channels (GroupNorm(32) needs multiples of 32; CLIP's
#: 64-dim heads need a text width >= 64)
SMALL = {
    "unet": _small(SD15_UNET, block_out_channels=(32, 32, 64, 64), cross_attention_dim=64),
    "vae": _small(SD15_VAE, block_out_channels=(32, 32, 64, 64), layers_per_block=1),
    "text": _small(SD15_TEXT, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=1, projection_dim=64),
    "controlnet": _small(SD15_CONTROLNET, block_out_channels=(32, 32, 64, 64), cross_attention_dim=64,
                         conditioning_embedding_out_channels=(16, 16, 32, 32)),
    "motion": _small(ANIMATEDIFF_V2, block_out_channels=(32, 32, 64, 64)),
    "dino": _small(DINOV2_SMALL, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64),
}
FULL = {"unet": SD15_UNET, "vae": SD15_VAE, "text": SD15_TEXT, "controlnet": SD15_CONTROLNET,
        "motion": ANIMATEDIFF_V2, "dino": DINOV2_SMALL}
SCALES = {"full": FULL, "small": SMALL}

#: parameter counts at full size as built here (meta device); UNet, VAE and text encoder equal
#: the published SD 1.5 models' counts exactly, ControlNet / motion module / DINOv2 are the
#: commonly quoted ~361M / ~453M / ~22M
EXPECTED_FULL_PARAMS = {"unet": 859_520_964, "vae": 83_653_863, "text": 123_060_480,
                        "controlnet": 361_279_120, "motion": 453_209_280, "dino": 22_056_576}

FILES = {
    "checkpoint": ("checkpoints", "v1-5-pruned-emaonly.safetensors"),
    "controlnet": ("controlnet", "control_v11e_sd15_ip2p.safetensors"),
    "motion": ("animatediff_models", "mm_sd_v15_v2.ckpt"),
    "tokenizer": ("tokenizers", "sd1_tokenizer"),
    "dino": ("dinov2", "dinov2-small"),
    "dataset": ("fdd_datasets", "scale-edit"),
}
_STAMP = ".fdd-realsize-v1-{scale}"


def configs(scale: str = "full") -> dict[str, dict]:
    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {sorted(SCALES)}, got {scale!r}")
    return {k: dict(v) for k, v in SCALES[scale].items()}


def realsize_paths(root: str | os.PathLike) -> dict[str, str]:
    root = os.fspath(root)
    return {k: os.path.join(root, d, n) for k, (d, n) in FILES.items()}


# --------------------------------------------------------------------------------------------
# building


_SEED_OFFSET = {"unet": 0, "vae": 1, "text": 2, "controlnet": 3, "motion": 4, "dino": 5}


def build(kind: str, scale: str = "full", device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """One randomly initialised module (``unet``, ``vae``, ``text``, ``controlnet``, ``motion``,
    ``dino``) of ``scale``, built directly on ``device`` (``"meta"``: no memory) in ``dtype``."""
    cfg = configs(scale)[kind]
    torch.manual_seed(seed + _SEED_OFFSET[kind])
    with torch.device(device):
        if kind == "unet":
            from diffusers import UNet2DConditionModel

            m = UNet2DConditionModel(**cfg)
        elif kind == "vae":
            from diffusers import AutoencoderKL

            m = AutoencoderKL(**cfg)
        elif kind == "text":
            from transformers import CLIPTextConfig, CLIPTextModel

            m = CLIPTextModel(CLIPTextConfig(**cfg))
        elif kind == "controlnet":
            from diffusers import ControlNetModel

            m = ControlNetModel(**cfg)
        elif kind == "motion":
            from diffusers import MotionAdapter

            m = MotionAdapter(**cfg)
        elif kind == "dino":
            from transformers import Dinov2Config, Dinov2Model

            m = Dinov2Model(Dinov2Config(**cfg))
        else:
            raise ValueError(f"kind: unknown {kind!r}")
    if str(device) != "meta" and dtype != torch.float32:
        m = torch.nn.Module.to(m, dtype)  # plain cast (diffusers' override only adds a warning)
    return m.eval().requires_grad_(False)


def parameter_counts(scale: str = "full") -> dict[str, int]:
    """Parameters of every model of ``scale``, built on the meta device (no memory, ~1 s)."""
    return {k: sum(p.numel() for p in build(k, scale, device="meta").parameters()) for k in SCALES[scale]}


# --------------------------------------------------------------------------------------------
# writing


def _release(*mods) -> None:
    import gc

    del mods
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write_realsize_tree(root: str | os.PathLike, scale: str = "full", device="cpu", *,
                        backbone_dtype: torch.dtype = torch.float16,
                        controlnet_dtype: torch.dtype = torch.float16,
                        motion_dtype: torch.dtype = torch.float32, clip_frames: int = 8,
                        clip_size: int = 64, seed: int = 0, force: bool = False,
                        log=print) -> dict[str, str]:
    """Write the tree described in the module docstring under ``root`` (which should not be
    inside a repository: several GB at full size). Skipped when the stamp of this ``scale`` and
    all files exist, unless ``force``. Returns the paths by kind plus ``"info"``, a JSON file
    with the dtypes, parameter counts, file sizes and seconds taken."""
    from .fdd_fixtures import write_manifest
    from ..models.ldm_formats import save_ldm_controlnet, save_ldm_sd1_checkpoint
    from ..models.motion_formats import save_animatediff_original
    from .tiny import write_tiny_tokenizer

    root = os.fspath(root)
    paths = realsize_paths(root)
    info_path = os.path.join(root, "realsize_info.json")
    stamp = os.path.join(root, _STAMP.format(scale=scale))
    if not force and os.path.isfile(stamp) and all(os.path.exists(p) for p in paths.values()):
        return {**paths, "info": info_path}
    if os.path.exists(stamp):
        os.unlink(stamp)
    for p in paths.values():
        os.makedirs(os.path.dirname(p), exist_ok=True)
    info: dict = {"scale": scale, "device": str(device), "params": {}, "dtypes": {}, "bytes": {}, "seconds": {}}

    def timed(name, fn):
        t0 = time.perf_counter()
        fn()
        info["seconds"][name] = round(time.perf_counter() - t0, 2)
        p = paths[name]
        info["bytes"][name] = (os.path.getsize(p) if os.path.isfile(p) else
                               sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(p) for f in fs))
        log(f"[realsize] {name}: {info['bytes'][name] / 1e9:.3f} GB in {info['seconds'][name]:.1f}s -> {p}")

    def checkpoint():
        unet = build("unet", scale, device, backbone_dtype, seed)
        vae = build("vae", scale, device, backbone_dtype, seed)
        te = build("text", scale, device, backbone_dtype, seed)
        for k, m in (("unet", unet), ("vae", vae), ("text", te)):
            info["params"][k] = sum(p.numel() for p in m.parameters())
        info["dtypes"]["checkpoint"] = str(backbone_dtype)
        save_ldm_sd1_checkpoint(paths["checkpoint"], unet, vae, te, dtype=backbone_dtype)
        _release(unet, vae, te)

    def controlnet():
        cn = build("controlnet", scale, device, controlnet_dtype, seed)
        info["params"]["controlnet"] = sum(p.numel() for p in cn.parameters())
        info["dtypes"]["controlnet"] = str(controlnet_dtype)
        save_ldm_controlnet(paths["controlnet"], cn, dtype=controlnet_dtype)
        _release(cn)

    def motion():
        ad = build("motion", scale, device, motion_dtype, seed).to("cpu")  # torch.save keeps devices
        info["params"]["motion"] = sum(p.numel() for p in ad.parameters())
        info["dtypes"]["motion"] = str(motion_dtype)
        save_animatediff_original(paths["motion"], ad)
        _release(ad)

    def tokenizer():
        write_tiny_tokenizer(paths["tokenizer"])

    def dino():
        from safetensors.torch import save_file

        m = build("dino", scale, "cpu", torch.float32, seed)
        info["params"]["dino"] = sum(p.numel() for p in m.parameters())
        folder = paths["dino"]
        os.makedirs(folder, exist_ok=True)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, os.path.join(folder, "model.safetensors"),
                  metadata={"format": "pt"})
        d = m.config.to_dict()
        d["architectures"] = ["Dinov2Model"]
        with open(os.path.join(folder, "config.json"), "w") as fh:
            json.dump(d, fh, indent=1)
        with open(os.path.join(folder, "preprocessor_config.json"), "w") as fh:
            json.dump({"image_processor_type": "BitImageProcessor", "image_mean": [0.485, 0.456, 0.406],
                       "image_std": [0.229, 0.224, 0.225], "crop_size": {"height": 224, "width": 224}}, fh)

    def dataset():
        import numpy as np
        from PIL import Image

        from .clip import moving_shapes_clip

        folder = paths["dataset"]
        name = "clips/clip_000"
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        arr = (moving_shapes_clip(clip_frames, clip_size, clip_size, seed=seed).numpy() * 255).round().astype(np.uint8)
        for f, img in enumerate(arr):
            Image.fromarray(img).save(os.path.join(folder, name, f"{f:04d}.png"))
        write_manifest(folder, [{"clip": name, "instruction": "turn the red ball green",
                                 "output_caption": "a green ball and a blue square moving", "task": "Local"}])

    for name, fn in (("checkpoint", checkpoint), ("controlnet", controlnet), ("motion", motion),
                     ("tokenizer", tokenizer), ("dino", dino), ("dataset", dataset)):
        timed(name, fn)
    with open(info_path, "w") as fh:
        json.dump(info, fh, indent=1)
    with open(stamp, "w") as fh:
        fh.write("ok\n")
    return {**paths, "info": info_path}


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m fdd.testing.realsize", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=None, help="where to write the tree (outside the repository)")
    ap.add_argument("--scale", default="full", choices=sorted(SCALES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--counts", action="store_true", help="print parameter counts (meta device) and exit")
    a = ap.parse_args(argv)
    if a.counts or not a.root:
        for k, n in parameter_counts(a.scale).items():
            exp = EXPECTED_FULL_PARAMS.get(k) if a.scale == "full" else None
            print(f"{k:10s} {n:>13,d}" + (f"   (expected {exp:,d})" if exp else ""))
        return 0
    for k, p in write_realsize_tree(a.root, a.scale, a.device, force=a.force).items():
        print(f"{k}: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
