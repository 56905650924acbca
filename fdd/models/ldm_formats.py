"""diffusers -> original LDM / ControlNet key converters: the writers of the real single-file
formats (an SD 1.x ``.safetensors`` / ``.ckpt`` checkpoint, ``control_v11*_sd15_*.safetensors``)
that ``python -m fdd.toy ship`` exports and the test fixtures (``fdd.testing``) are built on.

diffusers ships only the LDM -> diffusers direction (``diffusers.loaders.single_file_utils``), so
this module writes the inverse mapping. Everything is derived from the module itself (number of levels,
resnets per level, which levels carry attention, hint-block depth), so it works for the tiny
2-level models and for a real 4-level SD 1.5 alike.

LDM layout reminder (UNet, ``openaimodel.py``):

- ``input_blocks.0.0`` is ``conv_in``; then for each level ``l`` its ``n`` resnets (each
  ``input_blocks.i.0``, plus ``input_blocks.i.1`` = SpatialTransformer when the level has
  attention), then (all but the last level) one downsampler ``input_blocks.i.0.op``.
- ``middle_block.0/1/2`` = resnet, transformer, resnet.
- ``output_blocks.i`` for each up level: ``n + 1`` resnets (+ transformer at ``.1``); the last
  one of a level carries the upsampler at ``.1.conv`` (no attention) or ``.2.conv``.
- ``time_embed.0/2``, ``out.0`` (norm), ``out.2`` (conv).
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import torch

from .state_dict import save_safetensors_atomic

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
CONTROLNET_PREFIX = "control_model."

#: diffusers ResnetBlock2D child -> LDM ResBlock child
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
#: diffusers VAE ResnetBlock2D child -> LDM (taming) ResnetBlock child
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "conv_shortcut": "nin_shortcut"}
#: diffusers VAE mid Attention child -> LDM AttnBlock child
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _remap(sd: Mapping[str, torch.Tensor], rules: Mapping[str, str], what: str) -> dict[str, torch.Tensor]:
    """Rename every key by its longest matching module-path prefix in ``rules``.

    ``rules`` maps a diffusers module path (``"down_blocks.0.resnets.0.norm1"``) to its LDM
    path. Every key must be covered: a key left over means the converter does not know a
    layer of this model, and silently dropping it would make a broken fixture.
    """
    out: dict[str, torch.Tensor] = {}
    missing = []
    for key, value in sd.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:cut])
            if head in rules:
                out[rules[head] + "." + ".".join(parts[cut:])] = value
                break
        else:
            missing.append(key)
    if missing:
        raise ValueError(f"{what}: no LDM name for {len(missing)} keys, e.g. {missing[:5]}")
    return out


def _unet_resnet_rules(rules: dict, d: str, l: str, module) -> None:
    for dn, ln in _UNET_RESNET.items():
        if getattr(module, dn, None) is not None:
            rules[f"{d}.{dn}"] = f"{l}.{ln}"


def _unet_encoder_rules(model) -> dict[str, str]:
    """Rules for the parts a UNet and a ControlNet share: time embedding, conv_in, down and
    mid blocks. Also returns, under the key ``None``, the number of LDM input blocks."""
    rules: dict = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
    }
    i = 1
    for lvl, block in enumerate(model.down_blocks):
        attns = getattr(block, "attentions", None)
        for j, res in enumerate(block.resnets):
            _unet_resnet_rules(rules, f"down_blocks.{lvl}.resnets.{j}", f"input_blocks.{i}.0", res)
            if attns is not None and len(attns) > j:
                rules[f"down_blocks.{lvl}.attentions.{j}"] = f"input_blocks.{i}.1"
            i += 1
        if getattr(block, "downsamplers", None):
            rules[f"down_blocks.{lvl}.downsamplers.0.conv"] = f"input_blocks.{i}.0.op"
            i += 1
    mid = model.mid_block
    _unet_resnet_rules(rules, "mid_block.resnets.0", "middle_block.0", mid.resnets[0])
    for k, res in enumerate(mid.resnets[1:], start=1):
        # LDM: resnet, transformer, resnet -> middle_block.0, .1, .2
        _unet_resnet_rules(rules, f"mid_block.resnets.{k}", f"middle_block.{2 * k}", res)
    for k, _ in enumerate(getattr(mid, "attentions", []) or []):
        rules[f"mid_block.attentions.{k}"] = f"middle_block.{2 * k + 1}"
    rules[None] = i
    return rules


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` state dict -> LDM ``openaimodel`` keys (no prefix).

    Shapes are unchanged (SD 1.x transformer ``proj_in``/``proj_out`` are 1x1 convs in both
    layouts; with ``use_linear_projection`` both sides are Linear)."""
    rules = _unet_encoder_rules(unet)
    rules.pop(None)
    rules["conv_norm_out"] = "out.0"
    rules["conv_out"] = "out.2"
    i = 0
    for lvl, block in enumerate(unet.up_blocks):
        attns = getattr(block, "attentions", None)
        n = len(block.resnets)
        for j, res in enumerate(block.resnets):
            _unet_resnet_rules(rules, f"up_blocks.{lvl}.resnets.{j}", f"output_blocks.{i}.0", res)
            has_attn = attns is not None and len(attns) > j
            if has_attn:
                rules[f"up_blocks.{lvl}.attentions.{j}"] = f"output_blocks.{i}.1"
            if j == n - 1 and getattr(block, "upsamplers", None):
                rules[f"up_blocks.{lvl}.upsamplers.0.conv"] = f"output_blocks.{i}.{2 if has_attn else 1}.conv"
            i += 1
    return _remap(unet.state_dict(), rules, "unet_to_ldm")


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` -> LDM ``first_stage_model`` keys (no prefix).

    The decoder's up levels are numbered in reverse in LDM (``decoder.up.0`` is the level at
    full resolution, diffusers' last ``up_blocks``). The mid-block attention projections are
    ``Linear [C, C]`` in diffusers and ``Conv2d 1x1 [C, C, 1, 1]`` in LDM: reshaped here."""
    rules: dict[str, str] = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for side in ("encoder", "decoder"):
        part = getattr(vae, side)
        rules[f"{side}.conv_in"] = f"{side}.conv_in"
        rules[f"{side}.conv_out"] = f"{side}.conv_out"
        rules[f"{side}.conv_norm_out"] = f"{side}.norm_out"
        for k, res in enumerate(part.mid_block.resnets):
            for dn, ln in _VAE_RESNET.items():
                rules[f"{side}.mid_block.resnets.{k}.{dn}"] = f"{side}.mid.block_{k + 1}.{ln}"
        for k, _ in enumerate(part.mid_block.attentions or []):
            for dn, ln in _VAE_ATTN.items():
                rules[f"{side}.mid_block.attentions.{k}.{dn}"] = f"{side}.mid.attn_{k + 1}.{ln}"
    for i, block in enumerate(vae.encoder.down_blocks):
        for j, _ in enumerate(block.resnets):
            for dn, ln in _VAE_RESNET.items():
                rules[f"encoder.down_blocks.{i}.resnets.{j}.{dn}"] = f"encoder.down.{i}.block.{j}.{ln}"
        if block.downsamplers:
            rules[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
    n = len(vae.decoder.up_blocks)
    for i, block in enumerate(vae.decoder.up_blocks):
        b = n - 1 - i
        for j, _ in enumerate(block.resnets):
            for dn, ln in _VAE_RESNET.items():
                rules[f"decoder.up_blocks.{i}.resnets.{j}.{dn}"] = f"decoder.up.{b}.block.{j}.{ln}"
        if block.upsamplers:
            rules[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{b}.upsample.conv"
    out = _remap(vae.state_dict(), rules, "vae_to_ldm")
    for k, v in out.items():
        if ".mid.attn_" in k and k.endswith((".q.weight", ".k.weight", ".v.weight", ".proj_out.weight")) and v.ndim == 2:
            out[k] = v.reshape(*v.shape, 1, 1)
    return out


def text_encoder_to_ldm(te, position_ids: bool = True, text_model_level: bool = True) -> dict[str, torch.Tensor]:
    """transformers ``CLIPTextModel`` -> keys under ``cond_stage_model.transformer.text_model.``.

    transformers 5 flattened ``CLIPTextModel`` (no ``text_model.`` level in its state dict),
    transformers 4 had it; both are accepted. ``position_ids`` adds the int64
    ``embeddings.position_ids`` buffer most real SD 1.x files carry (a non-persistent buffer,
    so not in the module's state dict). ``text_model_level=False`` writes the variant seen in
    the wild with keys directly under ``cond_stage_model.transformer.``."""
    prefix = CLIP_PREFIX if text_model_level else CLIP_PREFIX[: -len("text_model.")]
    sd = te.state_dict()
    out = {}
    for k, v in sd.items():
        k = k[len("text_model."):] if k.startswith("text_model.") else k
        out[prefix + k] = v
    if position_ids:
        n = te.config.max_position_embeddings
        out[prefix + "embeddings.position_ids"] = torch.arange(n, dtype=torch.int64)[None]
    return out


def controlnet_to_ldm(cn) -> dict[str, torch.Tensor]:
    """diffusers ``ControlNetModel`` -> LDM ``cldm`` ControlNet keys (no prefix).

    ``input_hint_block`` is a Sequential of convs with SiLU between them, so the convs sit at
    even indices: ``conv_in`` at 0, ``blocks.k`` at ``2k + 2``, ``conv_out`` last (14 for the
    real 8-conv SD hint encoder). ``zero_convs.i.0`` / ``middle_block_out.0`` are diffusers'
    ``controlnet_down_blocks.i`` / ``controlnet_mid_block``."""
    rules = _unet_encoder_rules(cn)
    n_in = rules.pop(None)
    emb = cn.controlnet_cond_embedding
    rules["controlnet_cond_embedding.conv_in"] = "input_hint_block.0"
    for k in range(len(emb.blocks)):
        rules[f"controlnet_cond_embedding.blocks.{k}"] = f"input_hint_block.{2 * k + 2}"
    rules["controlnet_cond_embedding.conv_out"] = f"input_hint_block.{2 * len(emb.blocks) + 2}"
    assert len(cn.controlnet_down_blocks) == n_in, "one zero conv per LDM input block"
    for i in range(n_in):
        rules[f"controlnet_down_blocks.{i}"] = f"zero_convs.{i}.0"
    rules["controlnet_mid_block"] = "middle_block_out.0"
    return _remap(cn.state_dict(), rules, "controlnet_to_ldm")


def _cast(sd: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu() for k, v in sd.items()}


def _write(path: str | os.PathLike, sd: dict[str, torch.Tensor], nested: bool) -> str:
    path = os.fspath(path)
    if path.lower().endswith((".safetensors", ".sft")):
        if nested:
            raise ValueError("safetensors files cannot nest a state_dict; use a .ckpt path for nested=True")
        return save_safetensors_atomic(sd, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"state_dict": sd} if nested else sd, path)
    return path


def save_ldm_sd1_checkpoint(path: str | os.PathLike, unet, vae=None, text_encoder=None, *,
                            unet_prefix: bool = True, dtype: torch.dtype = torch.float32,
                            nested: bool = False, position_ids: bool = True,
                            text_model_level: bool = True,
                            extra: Mapping[str, torch.Tensor] | None = None) -> str:
    """Write an SD 1.x single-file checkpoint as real downloads are laid out.

    - ``.safetensors`` -> safetensors; any other extension -> ``torch.save`` of plain tensors
      (a weights-only pickle, like ``v1-5-pruned-emaonly.ckpt``).
    - ``unet_prefix=False`` writes the bare UNet (keys ``input_blocks.*`` ...) and nothing else,
      the layout of UNet-only extracts.
    - ``nested`` wraps the dict in ``{"state_dict": ...}`` (pickle only, as LDM training does).
    - ``position_ids`` / ``text_model_level``: see :func:`text_encoder_to_ldm`.
    - ``extra`` adds keys verbatim (e.g. markers of other model families for error tests).
    """
    if unet_prefix:
        sd = {UNET_PREFIX + k: v for k, v in unet_to_ldm(unet).items()}
        if vae is not None:
            sd.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae).items()})
        if text_encoder is not None:
            sd.update(text_encoder_to_ldm(text_encoder, position_ids=position_ids,
                                          text_model_level=text_model_level))
    else:
        sd = dict(unet_to_ldm(unet))
    if extra:
        sd.update(extra)
    return _write(path, _cast(sd, dtype), nested)


def save_ldm_controlnet(path: str | os.PathLike, controlnet, prefix: bool = True,
                        dtype: torch.dtype = torch.float32) -> str:
    """Write a ControlNet as ``control_v11*_sd15_*.safetensors`` is laid out (``control_model.``
    prefix), or bare (``prefix=False``, as some community ControlNets are)."""
    sd = controlnet_to_ldm(controlnet)
    if prefix:
        sd = {CONTROLNET_PREFIX + k: v for k, v in sd.items()}
    return _write(path, _cast(sd, dtype), nested=False)


def ldm_key_prefixes(keys: Iterable[str], depth: int = 2) -> list[str]:
    """Distinct leading ``depth`` components of ``keys`` (a small debugging aid)."""
    return sorted({".".join(k.split(".")[:depth]) for k in keys})
