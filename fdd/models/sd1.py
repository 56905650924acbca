"""Load an SD 1.x backbone (UNet + VAE + CLIP text encoder) from a real weight file or folder.

Accepted inputs:

- an LDM single file (``v1-5-pruned-emaonly.safetensors``, ``.ckpt``), keys under
  ``model.diffusion_model.`` / ``first_stage_model.`` / ``cond_stage_model.transformer.``
  (the CLIP tower appears both with and without a ``text_model.`` level), optionally nested
  under ``state_dict``, fp32 or fp16;
- a diffusers pipeline folder (``unet/``, ``vae/``, ``text_encoder/``, optional ``tokenizer/``).

Configs are inferred from the weights only (shapes and key names), as ComfyUI does, so a tiny
file in the real layout goes through the same code path as a 4 GB one. Conversion to diffusers
names uses diffusers' own ``single_file_utils`` converters followed by a *strict* load, so a
file that does not fit the inferred architecture fails loudly instead of half-loading.

Conventions that cannot be read from weights (documented, SD 1.x values):

- UNet attention: 8 heads in every transformer (SD 1.x ``num_heads=8``; head dim varies);
- CLIP text: head dim 64, so heads = hidden // 64 (12 for ViT-L/14's 768), ``quick_gelu``;
- GroupNorm with 32 groups everywhere; VAE latent scaling factor 0.18215.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from .errors import ModelLoadError
from .state_dict import key_mismatch_report, read_state_dict, strip_prefix

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."
CONTROLNET_PREFIX = "control_model."

#: SD 1.x: every UNet SpatialTransformer has 8 heads (cannot be read from weights)
SD1_UNET_HEADS = 8
#: CLIP text transformers use 64-dim heads (ViT-L/14: 768 / 64 = 12 heads)
CLIP_HEAD_DIM = 64
SD1_SCALING_FACTOR = 0.18215
#: cross-attention context width of the other Stable Diffusion families
_SD2_CONTEXT, _SDXL_CONTEXT = 1024, 2048

EXPECTED_SD1 = ("an SD 1.x checkpoint: a single .safetensors/.ckpt with model.diffusion_model., "
                "first_stage_model. and cond_stage_model.transformer. weights, or a diffusers "
                "folder with unet/, vae/ and text_encoder/")


@dataclass
class SD1Backbone:
    """A loaded SD 1.x backbone.

    ``vae_scale_factor`` is the pixel / latent size ratio (2 ** number of VAE downsamplers: 8
    for real SD 1.x, 4 for the tiny test models); ``scaling_factor`` multiplies VAE latents
    before they enter the UNet (0.18215 for SD 1.x).
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    source: str
    vae_scale_factor: int
    scaling_factor: float = SD1_SCALING_FACTOR


# --------------------------------------------------------------------------------------------
# recognising what a state dict is


def _any_prefix(keys, *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def _context_dim(sd: Mapping[str, torch.Tensor]) -> int | None:
    for k, v in sd.items():
        if k.endswith("attn2.to_k.weight") and v.ndim == 2:
            return int(v.shape[1])
    return None


def describe_state_dict(sd: Mapping[str, torch.Tensor]) -> str | None:
    """A short human description of what a state dict looks like, or None if unrecognised.

    Used for error messages when a file is given to the wrong loader."""
    keys = list(sd)
    if _any_prefix(keys, "conditioner.embedders") or _any_prefix(keys, UNET_PREFIX + "label_emb"):
        return "an SDXL checkpoint"
    if _any_prefix(keys, CONTROLNET_PREFIX, "input_hint_block.", "zero_convs."):
        return "a ControlNet (LDM format)"
    if _any_prefix(keys, "controlnet_cond_embedding.", "controlnet_down_blocks."):
        return "a ControlNet (diffusers format)"
    if any("motion_modules." in k or "temporal_transformer" in k for k in keys):
        return "an AnimateDiff motion module"
    if any(k.startswith("lora_") or ".lora_down." in k or ".lora_A." in k or "lora_unet_" in k for k in keys):
        return "a LoRA"
    if _any_prefix(keys, OPENCLIP_PREFIX):
        return "an SD 2.x checkpoint (OpenCLIP text encoder)"
    if _any_prefix(keys, UNET_PREFIX):
        ctx = _context_dim(sd)
        if ctx == _SD2_CONTEXT:
            return "an SD 2.x checkpoint (context dim 1024)"
        if ctx == _SDXL_CONTEXT:
            return "an SDXL checkpoint (context dim 2048)"
        return "a Stable Diffusion checkpoint (a backbone)"
    if _any_prefix(keys, "input_blocks.", "time_embed.") and _any_prefix(keys, "output_blocks."):
        return "a UNet-only file (bare LDM UNet weights)"
    if _any_prefix(keys, "encoder.down.", "decoder.up.") or _any_prefix(keys, "encoder.down_blocks."):
        return "a standalone VAE"
    if _any_prefix(keys, "down_blocks.", "up_blocks.", "mid_block."):
        return "diffusers-format UNet weights (no config)"
    if _any_prefix(keys, "text_model.", "embeddings.token_embedding"):
        return "a CLIP text encoder"
    return None


# --------------------------------------------------------------------------------------------
# config inference


def _indices(sd: Mapping[str, Any], prefix: str) -> list[int]:
    """Sorted distinct integers that follow ``prefix`` in the keys (``input_blocks.`` -> 0..11)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def _need(sd: Mapping[str, torch.Tensor], key: str, path, what: str) -> torch.Tensor:
    if key not in sd:
        raise ModelLoadError(path, f"the {what} weights lack {key!r}, so the architecture cannot be "
                             "inferred (the file is incomplete or of another model family).", EXPECTED_SD1)
    return sd[key]


def infer_unet_encoder_config(u: Mapping[str, torch.Tensor], path, heads: int | None = None) -> dict:
    """Infer the down path + mid block of an LDM ``openaimodel`` UNet (shared with ControlNet).

    ``u`` has no prefix. Read from the weights:

    - ``in_channels`` / ``model_channels`` from ``input_blocks.0.0`` (conv_in);
    - levels: ``input_blocks`` are resnet(+transformer) blocks, a ``.0.op`` block (downsampler)
      closes a level; ``layers_per_block`` = resnets per level (must be equal across levels, as
      in every SD release and as the diffusers converter assumes);
    - ``block_out_channels`` from each level's resnet output conv (``out_layers.3``);
    - attention per level: ``input_blocks.i.1.proj_in`` present; transformer depth = number of
      ``transformer_blocks.N``; ``use_linear_projection`` if ``proj_in`` is a Linear (SD 2.x);
    - ``cross_attention_dim`` from ``attn2.to_k`` input features;
    - time embedding width from ``time_embed.0``.

    Heads cannot be read from weights: ``heads`` (default: SD 1.x's 8; for context 1024 the
    SD 2.x convention of 64-dim heads) goes into diffusers' legacy ``attention_head_dim``.
    """
    conv_in = _need(u, "input_blocks.0.0.weight", path, "UNet")
    model_channels, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    levels: list[list[int]] = [[]]
    for i in _indices(u, "input_blocks.")[1:]:
        if f"input_blocks.{i}.0.op.weight" in u:
            levels.append([])
        elif f"input_blocks.{i}.0.in_layers.0.weight" in u:
            levels[-1].append(i)
        else:
            raise ModelLoadError(path, f"input_blocks.{i} is neither a resnet nor a downsampler.", EXPECTED_SD1)
    counts = {len(lv) for lv in levels}
    if len(counts) != 1 or 0 in counts:
        raise ModelLoadError(path, f"the UNet levels have unequal resnet counts {[len(lv) for lv in levels]}.",
                             EXPECTED_SD1)
    channels, attn, depths, linear = [], [], [], False
    for lv in levels:
        channels.append(int(_need(u, f"input_blocks.{lv[0]}.0.out_layers.3.weight", path, "UNet").shape[0]))
        has = f"input_blocks.{lv[0]}.1.proj_in.weight" in u
        attn.append(has)
        if has:
            depths.append(len(_indices(u, f"input_blocks.{lv[0]}.1.transformer_blocks.")))
            linear = u[f"input_blocks.{lv[0]}.1.proj_in.weight"].ndim == 2
    if "middle_block.1.proj_in.weight" not in u:
        raise ModelLoadError(path, "the UNet has no middle-block transformer.", EXPECTED_SD1)
    mid_depth = len(_indices(u, "middle_block.1.transformer_blocks."))
    ctx = _context_dim(u)
    if ctx is None:
        raise ModelLoadError(path, "no cross-attention layer (attn2.to_k) found in the UNet.", EXPECTED_SD1)
    if heads is None:
        heads_cfg: Any = SD1_UNET_HEADS if ctx < _SD2_CONTEXT else [max(1, c // 64) for c in channels]
    else:
        heads_cfg = heads
    all_depths = depths + [mid_depth]
    depth_cfg: Any = all_depths[0] if len(set(all_depths)) == 1 else [
        (depths.pop(0) if a else 1) for a in attn]
    time_dim = int(_need(u, "time_embed.0.weight", path, "UNet").shape[0])
    cfg = dict(
        in_channels=in_channels,
        block_out_channels=tuple(channels),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=counts.pop(),
        cross_attention_dim=ctx,
        attention_head_dim=heads_cfg,
        transformer_layers_per_block=depth_cfg,
        use_linear_projection=linear,
        norm_num_groups=32,
    )
    if time_dim != 4 * model_channels:
        cfg["time_embedding_dim"] = time_dim
    if channels[0] != model_channels:
        raise ModelLoadError(path, "conv_in and the first level disagree on the channel count.", EXPECTED_SD1)
    return cfg


def infer_unet_config(u: Mapping[str, torch.Tensor], path, sample_size: int | None = None) -> dict:
    """Full ``UNet2DConditionModel`` config from bare LDM UNet keys (see
    :func:`infer_unet_encoder_config`); adds ``out_channels`` (``out.2``) and the up path,
    whose attention layout is read from ``output_blocks.i.1.proj_in`` per level."""
    cfg = infer_unet_encoder_config(u, path)
    cfg["out_channels"] = int(_need(u, "out.2.weight", path, "UNet").shape[0])
    n_levels, per = len(cfg["block_out_channels"]), cfg["layers_per_block"] + 1
    outs = _indices(u, "output_blocks.")
    if outs != list(range(n_levels * per)):
        raise ModelLoadError(path, f"the UNet has {len(outs)} output blocks where its down path implies "
                             f"{n_levels * per}.", EXPECTED_SD1)
    up = []
    for lvl in range(n_levels):
        has = any(f"output_blocks.{lvl * per + j}.1.proj_in.weight" in u for j in range(per))
        up.append("CrossAttnUpBlock2D" if has else "UpBlock2D")
    cfg["up_block_types"] = tuple(up)
    if sample_size:
        cfg["sample_size"] = sample_size
    return cfg


def infer_vae_config(v: Mapping[str, torch.Tensor], path) -> tuple[dict, int]:
    """``AutoencoderKL`` config from LDM (taming) VAE keys without prefix.

    ``ch`` = ``encoder.conv_in`` outputs; ``ch_mult`` from each ``encoder.down.i.block.0.conv2``;
    ``num_res_blocks`` = blocks in ``encoder.down.0``; ``z_channels`` from ``quant_conv`` (or
    half of ``encoder.conv_out``, which outputs mean and logvar). Returns the config and the
    pixel/latent ratio 2 ** (number of ``downsample`` convs)."""
    conv_in = _need(v, "encoder.conv_in.weight", path, "VAE")
    levels = _indices(v, "encoder.down.")
    if not levels:
        raise ModelLoadError(path, "the VAE has no encoder.down blocks.", EXPECTED_SD1)
    channels = [int(_need(v, f"encoder.down.{i}.block.0.conv2.weight", path, "VAE").shape[0]) for i in levels]
    nrb = len(_indices(v, "encoder.down.0.block."))
    n_down = sum(f"encoder.down.{i}.downsample.conv.weight" in v for i in levels)
    if n_down != len(levels) - 1:
        raise ModelLoadError(path, f"the VAE downsamples {n_down} times over {len(levels)} levels; SD VAEs "
                             "downsample after every level but the last.", EXPECTED_SD1)
    if "quant_conv.weight" in v:
        z = int(v["quant_conv.weight"].shape[0]) // 2
    else:
        z = int(_need(v, "encoder.conv_out.weight", path, "VAE").shape[0]) // 2
    cfg = dict(
        in_channels=int(conv_in.shape[1]),
        out_channels=int(_need(v, "decoder.conv_out.weight", path, "VAE").shape[0]),
        down_block_types=("DownEncoderBlock2D",) * len(levels),
        up_block_types=("UpDecoderBlock2D",) * len(levels),
        block_out_channels=tuple(channels),
        layers_per_block=nrb,
        latent_channels=z,
        norm_num_groups=32,
        scaling_factor=SD1_SCALING_FACTOR,
        use_quant_conv="quant_conv.weight" in v,
        use_post_quant_conv="post_quant_conv.weight" in v,
        mid_block_add_attention="encoder.mid.attn_1.q.weight" in v,
    )
    scale = 2 ** n_down
    cfg["sample_size"] = 64 * scale
    return cfg, scale


def infer_clip_text_config(t: Mapping[str, torch.Tensor], path) -> dict:
    """``CLIPTextConfig`` kwargs from CLIP text keys (``embeddings.*``, ``encoder.layers.N.*``).

    vocab and hidden from the token embedding, max positions from the position embedding,
    layers counted, intermediate from ``mlp.fc1``; heads = hidden // 64 (CLIP's head dim).
    SD 1.x uses ``quick_gelu``; the special-token ids are the SD 1.x tokenizer's (49406 / 49407)."""
    tok = _need(t, "embeddings.token_embedding.weight", path, "CLIP text encoder")
    vocab, hidden = int(tok.shape[0]), int(tok.shape[1])
    layers = _indices(t, "encoder.layers.")
    cfg = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(_need(t, "encoder.layers.0.mlp.fc1.weight", path, "CLIP text encoder").shape[0]),
        num_hidden_layers=len(layers),
        num_attention_heads=max(1, hidden // CLIP_HEAD_DIM),
        max_position_embeddings=int(_need(t, "embeddings.position_embedding.weight", path,
                                          "CLIP text encoder").shape[0]),
        hidden_act="quick_gelu",
        projection_dim=hidden,
    )
    if vocab >= 49408:
        cfg.update(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return cfg


# --------------------------------------------------------------------------------------------
# building modules and strict loading


def _clean(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if v is not None}


def strict_load(factory: Callable[[], torch.nn.Module], sd: Mapping[str, torch.Tensor], path, what: str,
                expected: str = EXPECTED_SD1, meta: bool = True, dtype: torch.dtype = torch.float32):
    """Build a module and load ``sd`` into it strictly, with a clear error on any mismatch.

    With ``meta`` the module is built on the meta device (no random init of hundreds of
    millions of weights) and the file's tensors are assigned; the module is rebuilt normally
    if something (a non-persistent buffer) would stay on the meta device."""
    sd = _clean(sd)
    with torch.device("meta") if meta else _nullctx():
        model = factory()
    problem = key_mismatch_report(model.state_dict(), sd)
    if problem:
        raise ModelLoadError(path, f"the {what} weights do not fit the architecture inferred from them: "
                             + problem + ".", expected)
    if meta:
        model.load_state_dict(sd, strict=True, assign=True)
        if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
            return strict_load(factory, sd, path, what, expected, meta=False, dtype=dtype)
    else:
        model.load_state_dict(sd, strict=True)
    return to_dtype(model, dtype).eval().requires_grad_(False)


def to_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast floating weights to ``dtype`` only where needed (plain ``nn.Module.to``: diffusers'
    override only adds a warning about modules to keep in fp32, none of which SD 1.x has)."""
    if any(p.is_floating_point() and p.dtype != dtype for p in list(model.parameters()) + list(model.buffers())):
        torch.nn.Module.to(model, dtype)
    return model


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _clip_keys_for_model(t: Mapping[str, torch.Tensor], model_keys) -> dict[str, torch.Tensor]:
    """Fit CLIP text keys (with or without ``text_model.``) to the layout the installed
    transformers uses (v5 flattened ``CLIPTextModel``; v4 had ``text_model.``)."""
    wants_level = any(k.startswith("text_model.") for k in model_keys)
    out = {}
    for k, v in t.items():
        k = k[len("text_model."):] if k.startswith("text_model.") else k
        out[("text_model." + k) if wants_level else k] = v
    pos = ("text_model." if wants_level else "") + "embeddings.position_ids"
    if pos in out and pos not in model_keys:
        del out[pos]  # a non-persistent buffer in current transformers; old files carry it
    return out


def _load_tokenizer(tokenizer, path):
    if tokenizer is None or not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    folder = os.fspath(tokenizer)
    if not os.path.isdir(folder):
        raise ModelLoadError(folder, "the tokenizer folder does not exist.",
                             "a CLIP tokenizer folder (vocab.json + merges.txt)")
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(folder, f"not a usable CLIP tokenizer folder ({exc}).",
                             "a CLIP tokenizer folder (vocab.json + merges.txt)") from exc


def _check_family(sd: Mapping[str, torch.Tensor], path) -> None:
    """Refuse SDXL / SD 2.x / non-backbone files with a message saying what the file is."""
    keys = list(sd)
    what = describe_state_dict(sd)
    if what and "SDXL" in what:
        raise ModelLoadError(path, f"this is an SDXL checkpoint ({_marker(keys, 'conditioner.embedders', UNET_PREFIX + 'label_emb')}); "
                             "SDXL backbones are not supported here.", EXPECTED_SD1)
    if what and "SD 2.x" in what:
        raise ModelLoadError(path, "this is an SD 2.x checkpoint (OpenCLIP text encoder / 1024-wide "
                             "cross-attention); SD 2.x backbones are not supported here.", EXPECTED_SD1)
    if _any_prefix(keys, UNET_PREFIX):
        return
    if what and what.startswith("a UNet-only"):
        ctx = _context_dim(sd)
        fam = {_SD2_CONTEXT: " (an SD 2.x UNet)", _SDXL_CONTEXT: " (an SDXL UNet)"}.get(ctx, "")
        raise ModelLoadError(path, f"this is a UNet-only file{fam} (bare input_blocks/output_blocks keys, "
                             "no VAE or text encoder), so a full backbone cannot be built from it.",
                             "a full SD 1.x checkpoint with UNet, VAE and text encoder")
    raise ModelLoadError(path, f"this looks like {what}, not an SD 1.x backbone." if what else
                         "the key layout is not recognised (no model.diffusion_model. keys).", EXPECTED_SD1)


def _marker(keys, *prefixes) -> str:
    hit = next((k for k in keys if k.startswith(prefixes)), None)
    return f"key {hit!r}" if hit else "2048-wide cross-attention"


# --------------------------------------------------------------------------------------------
# public loaders


def companion_tokenizer(path: str | os.PathLike) -> str | None:
    """The tokenizer folder shipped beside a single-file checkpoint, if any: ``NAME_tokenizer/``
    next to ``NAME.safetensors`` / ``NAME.ckpt`` holding ``vocab.json``. Single files carry no
    tokenizer; a model whose text encoder was trained with its own vocabulary (the toy
    backbone) ships it this way, and the loaders prefer it to a default SD 1.x tokenizer."""
    path = os.fspath(path)
    folder = os.path.splitext(path)[0] + "_tokenizer"
    return folder if os.path.isfile(os.path.join(folder, "vocab.json")) else None


def load_sd1_checkpoint(path: str | os.PathLike, tokenizer=None, dtype: torch.dtype = torch.float32) -> SD1Backbone:
    """Load an SD 1.x LDM single file (``.safetensors``, or weights-only ``.ckpt``).

    Configs of all three parts are inferred from the weights (see ``infer_*_config``), keys
    are converted with ``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint`` /
    ``convert_ldm_vae_checkpoint`` / ``convert_ldm_clip_checkpoint`` and loaded strictly.
    ``tokenizer`` is None, a tokenizer folder, or a tokenizer object; None picks up a
    :func:`companion_tokenizer` folder beside the file when there is one."""
    if tokenizer is None:
        tokenizer = companion_tokenizer(path)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)
    from transformers import CLIPTextConfig, CLIPTextModel

    path = os.fspath(path)
    sd = read_state_dict(path)
    _check_family(sd, path)
    u = strip_prefix(sd, UNET_PREFIX)
    v = strip_prefix(sd, VAE_PREFIX)
    t = strip_prefix(sd, CLIP_PREFIX)
    missing = [name for name, part in (("VAE (first_stage_model.)", v), ("text encoder (cond_stage_model.transformer.)", t))
               if not part]
    if missing:
        raise ModelLoadError(path, f"the checkpoint has a UNet but no {' and no '.join(missing)} weights.",
                             "a full SD 1.x checkpoint with UNet, VAE and text encoder")
    ctx = _context_dim(u)
    if ctx == _SDXL_CONTEXT:
        raise ModelLoadError(path, "this is an SDXL checkpoint (2048-wide cross-attention).", EXPECTED_SD1)
    if ctx == _SD2_CONTEXT:
        raise ModelLoadError(path, "this is an SD 2.x checkpoint (1024-wide cross-attention).", EXPECTED_SD1)

    vae_cfg, scale = infer_vae_config(v, path)
    unet_cfg = infer_unet_config(u, path, sample_size=512 // scale)
    t_norm = {(k[len("text_model."):] if k.startswith("text_model.") else k): x for k, x in t.items()}
    te_cfg = infer_clip_text_config(t_norm, path)
    if te_cfg["hidden_size"] != unet_cfg["cross_attention_dim"]:
        raise ModelLoadError(path, f"the text encoder width {te_cfg['hidden_size']} differs from the UNet's "
                             f"cross-attention width {unet_cfg['cross_attention_dim']}.", EXPECTED_SD1)

    unet_sd = convert_ldm_unet_checkpoint({UNET_PREFIX + k: x for k, x in u.items()}, unet_cfg)
    unet = strict_load(lambda: UNet2DConditionModel(**unet_cfg), unet_sd, path, "UNet", dtype=dtype)
    vae_sd = convert_ldm_vae_checkpoint({VAE_PREFIX + k: x for k, x in v.items()}, vae_cfg)
    vae = strict_load(lambda: AutoencoderKL(**vae_cfg), vae_sd, path, "VAE", dtype=dtype)

    tok = _load_tokenizer(tokenizer, path)
    if te_cfg["vocab_size"] < 49408 and getattr(tok, "eos_token_id", None) is not None:
        # a text encoder with its own vocabulary (the toy backbone): its special ids are its tokenizer's
        te_cfg.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    te = CLIPTextModel(CLIPTextConfig(**te_cfg))  # built for real: it has non-persistent buffers
    clip_sd = _clip_keys_for_model(convert_ldm_clip_checkpoint({CLIP_PREFIX + k: x for k, x in t.items()}),
                                   set(te.state_dict()))
    te = strict_load(lambda: te, clip_sd, path, "text encoder", meta=False, dtype=dtype)
    return SD1Backbone(unet=unet, vae=vae, text_encoder=te, tokenizer=tok,
                       source=path, vae_scale_factor=scale, scaling_factor=vae_cfg["scaling_factor"])


def load_sd1_diffusers(folder: str | os.PathLike, tokenizer=None, dtype: torch.dtype = torch.float32) -> SD1Backbone:
    """Load a diffusers pipeline folder (``unet/``, ``vae/``, ``text_encoder/``, optional
    ``tokenizer/``) offline. The tokenizer comes from ``tokenizer/`` unless one is given.
    SDXL folders (``text_encoder_2/`` or a ``text_time`` UNet) and SD 2.x ones (1024-wide
    cross-attention) are refused."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = os.fspath(folder)
    for sub in ("unet", "vae", "text_encoder"):
        if not os.path.isdir(os.path.join(folder, sub)):
            raise ModelLoadError(folder, f"the folder has no {sub}/ subfolder.", EXPECTED_SD1)
    if os.path.isdir(os.path.join(folder, "text_encoder_2")):
        raise ModelLoadError(folder, "this is an SDXL pipeline folder (it has text_encoder_2/).", EXPECTED_SD1)
    try:
        unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), local_files_only=True)
        vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae"), local_files_only=True)
        te = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(folder, f"could not load the diffusers folder ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}).", EXPECTED_SD1) from exc
    ctx = unet.config.cross_attention_dim
    if unet.config.addition_embed_type == "text_time" or ctx == _SDXL_CONTEXT:
        raise ModelLoadError(folder, "this is an SDXL checkpoint folder.", EXPECTED_SD1)
    if ctx == _SD2_CONTEXT:
        raise ModelLoadError(folder, "this is an SD 2.x checkpoint folder (1024-wide cross-attention).", EXPECTED_SD1)
    if tokenizer is None and os.path.isdir(os.path.join(folder, "tokenizer")):
        tokenizer = os.path.join(folder, "tokenizer")
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    return SD1Backbone(unet=to_dtype(unet, dtype).eval().requires_grad_(False),
                       vae=to_dtype(vae, dtype).eval().requires_grad_(False),
                       text_encoder=to_dtype(te, dtype).eval().requires_grad_(False),
                       tokenizer=_load_tokenizer(tokenizer, folder), source=folder,
                       vae_scale_factor=scale, scaling_factor=float(vae.config.scaling_factor))


def load_sd1(path: str | os.PathLike, tokenizer=None, dtype: torch.dtype = torch.float32) -> SD1Backbone:
    """Load an SD 1.x backbone from a single file or a diffusers folder."""
    if os.path.isdir(os.fspath(path)):
        return load_sd1_diffusers(path, tokenizer=tokenizer, dtype=dtype)
    return load_sd1_checkpoint(path, tokenizer=tokenizer, dtype=dtype)
