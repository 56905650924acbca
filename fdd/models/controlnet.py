"""Load a ControlNet (the FDD / EVE image-edit adapter, e.g. ``control_v11e_sd15_ip2p``).

Accepted inputs: an LDM single file with ``control_model.*`` keys (the lllyasviel v1.0 / v1.1
releases; v1.0 "full" files that also carry the backbone are fine, the backbone part is
ignored), the same without the ``control_model.`` prefix, or a diffusers folder
(``config.json`` + weights).

The config is inferred from the weights: the down path and mid block exactly as for the
backbone UNet (:func:`fdd.models.sd1.infer_unet_encoder_config`), plus the hint encoder:
``conditioning_channels`` = input channels of ``input_hint_block.0`` and
``conditioning_embedding_out_channels`` read from the hint convs (see
:func:`infer_hint_channels`).
"""

from __future__ import annotations

import os
from typing import Mapping

import torch

from .errors import ModelLoadError
from .sd1 import (CONTROLNET_PREFIX, _SD2_CONTEXT, _SDXL_CONTEXT, _indices, describe_state_dict,
                  infer_unet_encoder_config, strict_load, to_dtype)
from .state_dict import read_state_dict, strip_prefix

EXPECTED_CN = ("an SD 1.x ControlNet: a .safetensors/.pth with control_model.* (or bare "
               "input_hint_block/zero_convs) keys, or a diffusers ControlNet folder with config.json")


def infer_hint_channels(c: Mapping[str, torch.Tensor], path) -> tuple[int, tuple[int, ...]]:
    """Read the hint encoder layout from ``input_hint_block`` (convs at even indices, SiLU between).

    diffusers' ``ControlNetConditioningEmbedding(block_out_channels=B)`` is
    ``conv_in: cond -> B[0]``, then per step ``conv(B[i] -> B[i])``, ``conv(B[i] -> B[i+1], stride 2)``,
    then ``conv_out: B[-1] -> model_channels``. So ``B`` = outputs of ``conv_in`` and of every
    second middle conv. Returns ``(conditioning_channels, B)``."""
    idx = _indices(c, "input_hint_block.")
    convs = [c.get(f"input_hint_block.{i}.weight") for i in idx]
    if len(convs) < 2 or any(w is None or w.ndim != 4 for w in convs):
        raise ModelLoadError(path, "the input_hint_block is missing or not a stack of convolutions.", EXPECTED_CN)
    first, mids = convs[0], convs[1:-1]
    if len(mids) % 2:
        raise ModelLoadError(path, f"the input_hint_block has {len(mids)} middle convolutions; "
                             "a ControlNet hint encoder has pairs.", EXPECTED_CN)
    chans = [int(first.shape[0])]
    for k in range(0, len(mids), 2):
        a, b = mids[k], mids[k + 1]
        if a.shape[0] != a.shape[1] or b.shape[1] != a.shape[0] or a.shape[0] != chans[-1]:
            raise ModelLoadError(path, "the input_hint_block convolutions do not chain as a ControlNet hint "
                                 "encoder does.", EXPECTED_CN)
        chans.append(int(b.shape[0]))
    return int(first.shape[1]), tuple(chans)


def _hint_to_diffusers(c: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map ``input_hint_block.{0, 2, .., 2n+2}`` to ``controlnet_cond_embedding.{conv_in,
    blocks.0..n-1, conv_out}``. Done here because diffusers' ``convert_controlnet_checkpoint``
    hard-wires ``conv_out`` at index 14 (the real 8-conv encoder) and so mis-maps other depths."""
    idx = _indices(c, "input_hint_block.")
    names = (["conv_in"] + [f"blocks.{k}" for k in range(len(idx) - 2)] + ["conv_out"])
    out = {}
    for i, name in zip(idx, names):
        for p in ("weight", "bias"):
            key = f"input_hint_block.{i}.{p}"
            if key in c:
                out[f"controlnet_cond_embedding.{name}.{p}"] = c[key]
    return out


def _controlnet_part(sd: Mapping[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """The ControlNet keys of a file, without prefix; refuses files that are something else."""
    if any(k.startswith(CONTROLNET_PREFIX) for k in sd):
        return strip_prefix(sd, CONTROLNET_PREFIX)
    if any(k.startswith("input_hint_block.") for k in sd) and "time_embed.0.weight" in sd:
        return dict(sd)
    what = describe_state_dict(sd)
    if what == "a ControlNet (diffusers format)":
        raise ModelLoadError(path, "this is a diffusers-format ControlNet weight file without its config.",
                             "the diffusers folder (config.json + weights) or an LDM-format ControlNet file")
    raise ModelLoadError(path, f"this looks like {what}, not a ControlNet." if what
                         else "the key layout is not a ControlNet's (no control_model. / input_hint_block keys).",
                         EXPECTED_CN)


def load_controlnet(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load a ControlNet file or diffusers folder into a diffusers ``ControlNetModel``.

    Files: config inferred from the weights, keys converted with
    ``diffusers.loaders.single_file_utils.convert_controlnet_checkpoint(checkpoint, config)``
    (hint encoder mapped here, see :func:`_hint_to_diffusers`), then a strict load.
    SDXL ControlNets (``label_emb``) are refused. Heads follow the SD 1.x convention (8) for
    context widths below 1024, SD 2.x's 64-dim heads otherwise."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    path = os.fspath(path)
    if os.path.isdir(path):
        cfg_file = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_file):
            raise ModelLoadError(path, "the folder has no config.json.", EXPECTED_CN)
        import json

        with open(cfg_file) as fh:
            cls = json.load(fh).get("_class_name")
        if cls not in (None, "ControlNetModel"):
            raise ModelLoadError(path, f"the folder holds a {cls}, not a ControlNetModel.", EXPECTED_CN)
        try:
            cn = ControlNetModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(path, f"could not load the ControlNet folder ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}).", EXPECTED_CN) from exc
        return to_dtype(cn, dtype).eval().requires_grad_(False)

    sd = read_state_dict(path)
    c = _controlnet_part(sd, path)
    if any(k.startswith("label_emb.") for k in c):
        raise ModelLoadError(path, "this is an SDXL ControlNet (it has label_emb).", EXPECTED_CN)
    cfg = infer_unet_encoder_config(c, path)
    cond_ch, hint = infer_hint_channels(c, path)
    cfg.update(conditioning_channels=cond_ch, conditioning_embedding_out_channels=hint)
    n_in = len(_indices(c, "input_blocks."))
    missing = [f"zero_convs.{i}" for i in range(n_in) if f"zero_convs.{i}.0.weight" not in c]
    if missing or "middle_block_out.0.weight" not in c:
        raise ModelLoadError(path, f"the ControlNet lacks its output convolutions "
                             f"({', '.join((missing + ['middle_block_out'])[:4])}).", EXPECTED_CN)
    body = {k: v for k, v in c.items() if not k.startswith("input_hint_block.")}
    conv = convert_controlnet_checkpoint(body, cfg)
    conv.update(_hint_to_diffusers(c))
    return strict_load(lambda: ControlNetModel(**cfg), conv, path, "ControlNet", expected=EXPECTED_CN, dtype=dtype)


def check_controlnet_matches_unet(controlnet, unet, controlnet_path=None, backbone_path=None,
                                  vae_scale_factor: int | None = None) -> None:
    """Raise ``ModelLoadError`` unless the ControlNet's residuals fit the backbone UNet (the
    message names the ControlNet file and, when given, the backbone's).

    Compared: ``in_channels``, ``block_out_channels``, ``layers_per_block`` (number and width
    of the down residuals) and ``cross_attention_dim`` (the text context it attends to). A
    1024 / 2048 context names SD 2.x / SDXL as the likely family."""
    c, u = controlnet.config, unet.config
    diffs = []
    for name in ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim"):
        a, b = getattr(c, name, None), getattr(u, name, None)
        if isinstance(a, (list, tuple)):
            a, b = tuple(a), tuple(b) if b is not None else None
        if a != b:
            diffs.append(f"{name} {a} vs the backbone's {b}")
    emb = getattr(c, "conditioning_embedding_out_channels", None)
    if vae_scale_factor and emb:
        factor = 2 ** (len(emb) - 1)  # the hint encoder halves the image size per extra level
        if factor != vae_scale_factor:
            diffs.append(f"its image encoder reduces frames {factor}x vs the backbone VAE's {vae_scale_factor}x "
                         f"(latents of another size)")
    if not diffs:
        return
    fam = {_SD2_CONTEXT: " It looks like an SD 2.x ControlNet.",
           _SDXL_CONTEXT: " It looks like an SDXL ControlNet."}.get(c.cross_attention_dim, "")
    bb = f" '{backbone_path}'" if backbone_path else ""
    raise ModelLoadError(controlnet_path, f"this ControlNet does not match the backbone{bb}: " + "; ".join(diffs)
                         + "." + fam,
                         f"a ControlNet trained for this backbone (block_out_channels {tuple(u.block_out_channels)}, "
                         f"cross_attention_dim {u.cross_attention_dim})")
