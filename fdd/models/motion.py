"""AnimateDiff motion modules ("video adapters") and the motion UNet built from them.

Accepted inputs for :func:`load_motion_adapter`:

- the ORIGINAL AnimateDiff single files (``.ckpt`` read weights-only, or ``.safetensors``)
  with keys ``down_blocks.{i}.motion_modules.{j}.temporal_transformer....``,
  ``up_blocks.{i}.motion_modules.{j}....`` and, from v2 on, ``mid_block.motion_modules.{j}....``:

  ========================  ==========  ===============  ===================
  file                      mid block   ``pe`` length    notes
  ========================  ==========  ===============  ===================
  ``mm_sd_v15.ckpt`` (v1)   no          24
  ``mm_sd_v15_v2.ckpt``     yes         32
  ``v3_sd15_mm.ckpt``       no          32               diffusers' own detector
                                                         treats "no mid block,
                                                         32" as v3
  ``mm_sdxl_v10_beta``      no          32               3 blocks (320/640/1280)
  ========================  ==========  ===============  ===================

  The same single file with diffusers key names (``...motion_modules.0.transformer_blocks.0.
  attn1...``) is accepted too.
- a diffusers ``MotionAdapter`` folder (``config.json`` + weights), loaded with
  ``from_pretrained(folder, local_files_only=True)``.

The configuration of an original file is inferred from its weights, never looked up on a hub:
``block_out_channels`` from each block's ``proj_in`` width, ``motion_layers_per_block`` and
``motion_transformer_layers_per_block`` from the module / transformer indices, the mid block from
the presence of ``mid_block.*`` keys, ``motion_max_seq_length`` from the ``pos_encoder.pe`` buffer
shape ``[1, L, C]``. Two numbers are not visible in the weights and follow the AnimateDiff
convention: 8 attention heads per motion attention layer and GroupNorm with 32 groups (every
published AnimateDiff motion module uses both).

The sinusoidal ``pe`` buffers stored in the file are loaded into the diffusers module (diffusers
keeps one ``pos_embed.pe`` per transformer block where the original keeps one per attention
block; AnimateDiff computes both from the same formula), so a module saved in half precision
behaves exactly as the stored buffer says.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import torch

from .errors import ModelLoadError
from .state_dict import key_mismatch_report, read_json_file, read_state_dict

#: AnimateDiff convention, not stored in the weights
MOTION_HEADS = 8
MOTION_NORM_GROUPS = 32

_EXPECTED = ("an AnimateDiff motion module (mm_sd_v15.ckpt, mm_sd_v15_v2.ckpt, v3_sd15_mm.ckpt, "
             "their .safetensors versions) or a diffusers MotionAdapter folder")

_BLOCK_RE = re.compile(r"^(down_blocks\.(\d+)|up_blocks\.(\d+)|mid_block)\.motion_modules\.(\d+)\.(.*)$")
_TB_RE = re.compile(r"^transformer_blocks\.(\d+)\.")


def _guess_kind(sd: Mapping[str, torch.Tensor]) -> str:
    """A short human description of what a non-motion-module file probably is."""
    keys = list(sd)
    has = lambda frag: any(frag in k for k in keys)
    if has("controlnet_cond_embedding") or has("input_hint_block") or has("control_model."):
        return "a ControlNet (or SparseCtrl) model"
    if any(k.startswith(("lora_unet_", "lora_te")) for k in keys) or has(".lora_A.") or has(".lora_down."):
        return "a LoRA"
    if has("model.diffusion_model.") or has("first_stage_model."):
        return "a Stable Diffusion checkpoint"
    if has("encoder.down") and has("decoder.up"):
        return "a VAE"
    if has("input_blocks.") or (has("down_blocks.") and has("resnets.")):
        return "a UNet without motion modules"
    return "not a motion module"


def convert_original_motion_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename original AnimateDiff motion-module keys to diffusers ``MotionAdapter`` keys.

    Uses ``diffusers.loaders.single_file_utils.convert_animatediff_checkpoint_to_diffusers(checkpoint)``
    (which drops the ``pos_encoder`` buffers) and maps the buffers itself:
    ``...attention_blocks.0.pos_encoder.pe`` -> ``...pos_embed.pe``. Keys already in diffusers
    naming pass through unchanged.
    """
    from diffusers.loaders.single_file_utils import (
        convert_animatediff_checkpoint_to_diffusers,
    )

    out = convert_animatediff_checkpoint_to_diffusers(dict(sd))
    for k, v in sd.items():
        if k.endswith(".attention_blocks.0.pos_encoder.pe"):
            new = k.replace(".temporal_transformer", "").replace(".attention_blocks.0.pos_encoder.pe", ".pos_embed.pe")
            out[new] = v
    return out


def _original_pe_consistent(sd: Mapping[str, torch.Tensor], path: str) -> None:
    """The two attention blocks of an original transformer block must carry the same ``pe``:
    diffusers stores one per block (they are equal in every AnimateDiff release)."""
    for k, v in sd.items():
        if k.endswith(".attention_blocks.1.pos_encoder.pe"):
            other = sd.get(k.replace(".attention_blocks.1.", ".attention_blocks.0."))
            if other is not None and (other.shape != v.shape or not torch.equal(other, v)):
                raise ModelLoadError(path, f"the positional encodings of {k!r} and its sibling "
                                     "attention block differ, which diffusers' MotionAdapter cannot "
                                     "represent.", _EXPECTED)


def infer_motion_adapter_config(sd: Mapping[str, torch.Tensor], path: str | None = None) -> dict:
    """Infer ``MotionAdapter(**config)`` from diffusers-named motion-module weights.

    ``sd`` holds keys such as ``down_blocks.0.motion_modules.1.transformer_blocks.0.attn1.to_q.weight``.
    """
    blocks: dict[tuple[str, int], dict[int, set[int]]] = {}
    channels: dict[tuple[str, int], int] = {}
    pe_len: int | None = None
    for k, v in sd.items():
        m = _BLOCK_RE.match(k)
        if not m:
            continue
        kind = "down" if m.group(2) is not None else "up" if m.group(3) is not None else "mid"
        idx = int(m.group(2) or m.group(3) or 0)
        layer = int(m.group(4))
        rest = m.group(5)
        tb = _TB_RE.match(rest)
        blk = blocks.setdefault((kind, idx), {})
        tset = blk.setdefault(layer, set())
        if tb:
            tset.add(int(tb.group(1)))
        if rest == "proj_in.weight":
            channels[(kind, idx)] = int(v.shape[0])
        if rest.endswith("pos_embed.pe") and v.ndim == 3:
            pe_len = int(v.shape[1]) if pe_len is None else max(pe_len, int(v.shape[1]))
    downs = sorted(i for (kind, i) in blocks if kind == "down")
    ups = sorted(i for (kind, i) in blocks if kind == "up")
    if not downs or downs != list(range(len(downs))) or ups != list(range(len(downs))):
        raise ModelLoadError(path, f"the motion modules are incomplete (down blocks {downs}, up blocks {ups}).",
                             _EXPECTED)
    n = len(downs)
    try:
        block_out = [channels[("down", i)] for i in range(n)]
        up_channels = [channels[("up", i)] for i in range(n)]
    except KeyError as exc:
        raise ModelLoadError(path, f"a motion module has no proj_in weight ({exc}).", _EXPECTED) from exc
    if up_channels != list(reversed(block_out)):
        raise ModelLoadError(path, f"up-block channels {up_channels} do not mirror down-block channels {block_out}.",
                             _EXPECTED)

    def layers_of(kind: str, i: int) -> tuple[int, int]:
        layers = blocks[(kind, i)]
        if sorted(layers) != list(range(len(layers))):
            raise ModelLoadError(path, f"{kind} block {i} has motion modules {sorted(layers)}.", _EXPECTED)
        tcounts = {len(t) for t in layers.values()}
        if len(tcounts) != 1 or 0 in tcounts:
            raise ModelLoadError(path, f"{kind} block {i} has uneven transformer layers.", _EXPECTED)
        return len(layers), tcounts.pop()

    down_layers = [layers_of("down", i) for i in range(n)]
    up_layers = [layers_of("up", n - 1 - i) for i in range(n)]  # in down order
    for i in range(n):
        if up_layers[i][0] != down_layers[i][0] + 1 or up_layers[i][1] != down_layers[i][1]:
            raise ModelLoadError(path, f"up block {n - 1 - i} has {up_layers[i][0]} motion modules, expected "
                                 f"{down_layers[i][0] + 1} for {down_layers[i][0]} in down block {i}.", _EXPECTED)
    for c in block_out:
        if c % MOTION_NORM_GROUPS or c % MOTION_HEADS:
            raise ModelLoadError(path, f"channel count {c} is not divisible by {MOTION_NORM_GROUPS} groups / "
                                 f"{MOTION_HEADS} heads.", _EXPECTED)
    cfg = {
        "block_out_channels": tuple(block_out),
        "motion_layers_per_block": tuple(d[0] for d in down_layers),
        "motion_transformer_layers_per_block": tuple(d[1] for d in down_layers),
        "motion_num_attention_heads": MOTION_HEADS,
        "motion_norm_num_groups": MOTION_NORM_GROUPS,
        "motion_max_seq_length": pe_len if pe_len is not None else 32,
        "use_motion_mid_block": ("mid", 0) in blocks,
    }
    if cfg["use_motion_mid_block"]:
        mid_layers, mid_t = layers_of("mid", 0)
        cfg["motion_mid_block_layers_per_block"] = mid_layers
        cfg["motion_transformer_layers_per_mid_block"] = mid_t
    if "conv_in.weight" in sd:  # PIA-style adapters carry their own input convolution
        cfg["conv_in_channels"] = int(sd["conv_in.weight"].shape[1])
    return cfg


def _load_folder(folder: str, dtype: torch.dtype):
    from diffusers import MotionAdapter

    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise ModelLoadError(folder, "the folder has no config.json.", _EXPECTED)
    cfg = read_json_file(cfg_path, _EXPECTED, report_as=folder)
    cls_name = cfg.get("_class_name") if isinstance(cfg, dict) else None
    if cls_name != "MotionAdapter":
        raise ModelLoadError(folder, f"the folder holds a {cls_name!r}, not a MotionAdapter.", _EXPECTED)
    try:
        ad, info = MotionAdapter.from_pretrained(folder, local_files_only=True, torch_dtype=dtype,
                                                 output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(folder, f"diffusers could not load the MotionAdapter ({exc}).", _EXPECTED) from exc
    bad = [k for k in ("missing_keys", "mismatched_keys") if info.get(k)]
    if bad:
        raise ModelLoadError(folder, f"the weights do not fit the config: {', '.join(f'{k}={info[k][:3]}' for k in bad)}.",
                             _EXPECTED)
    return ad.eval()


def load_motion_adapter(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load an AnimateDiff motion module as a diffusers ``MotionAdapter`` (eval mode, ``dtype``).

    ``path`` is an original single file (``.ckpt``/``.pt``/``.pth`` weights-only pickle, or
    ``.safetensors``) or a diffusers MotionAdapter folder. The config is inferred from the
    weights (see the module docstring) and the weights are loaded strictly. Raises
    :class:`ModelLoadError` naming the file when it is not a motion module (an SD checkpoint,
    ControlNet, SparseCtrl, LoRA, ...) or is incomplete.
    """
    from diffusers import MotionAdapter

    path = os.fspath(path)
    if os.path.isdir(path):
        return _load_folder(path, dtype)
    sd = read_state_dict(path)
    if not any(".motion_modules." in k for k in sd):
        raise ModelLoadError(path, f"no AnimateDiff motion-module keys (down_blocks.*.motion_modules.*) "
                             f"found; this looks like {_guess_kind(sd)}.", _EXPECTED)
    if any("controlnet_cond_embedding" in k for k in sd):
        raise ModelLoadError(path, "this is a SparseCtrl ControlNet (it has controlnet_cond_embedding), "
                             "not a motion module.", _EXPECTED)
    _original_pe_consistent(sd, path)
    motion = {k: v for k, v in sd.items() if ".motion_modules." in k or k.startswith("conv_in.")}
    conv = convert_original_motion_keys(motion)
    cfg = infer_motion_adapter_config(conv, path)
    ad = MotionAdapter(**cfg)
    expected = ad.state_dict()
    # a file without stored pe buffers keeps the freshly computed sinusoidal ones
    for k, v in expected.items():
        if k.endswith("pos_embed.pe") and k not in conv:
            conv[k] = v
    problem = key_mismatch_report(expected, conv)
    if problem:
        raise ModelLoadError(path, "the motion-module weights do not form a complete MotionAdapter: "
                             + problem + ".", _EXPECTED)
    ad.load_state_dict(conv, strict=True)
    if dtype != torch.float32:
        ad = ad.to(dtype=dtype)
    return ad.eval()


def _expand(v, n: int) -> list:
    return [v] * n if isinstance(v, int) else list(v)


def build_motion_unet(unet2d, adapter, adapter_path: str | os.PathLike | None = None,
                      backbone_path: str | os.PathLike | None = None):
    """Inflate a ``UNet2DConditionModel`` with a ``MotionAdapter`` into a ``UNetMotionModel``.

    Uses ``diffusers.UNetMotionModel.from_unet2d(unet, motion_adapter, load_weights=True)``. Before
    that, the adapter is checked against the backbone: same number of blocks, the same channels
    per block and the same layers per block, so that e.g. an SDXL motion module on an SD 1.x
    backbone gives a :class:`ModelLoadError` naming the motion-module file rather than a
    size-mismatch traceback (the backbone's file too, when ``backbone_path`` is given). The result has the backbone's dtype and device, eval mode.

    Call the result with ``sample`` of shape ``(B, C, F, H, W)`` and ``encoder_hidden_states`` of
    shape ``(B*F, L, D)`` (UNetMotionModel does not repeat the text per frame).
    """
    from diffusers import UNetMotionModel

    ucfg, acfg = unet2d.config, adapter.config
    u_ch = list(ucfg["block_out_channels"])
    a_ch = list(acfg["block_out_channels"])
    expected = f"a motion module for a UNet with block_out_channels {u_ch}"
    bb = f"the backbone '{backbone_path}'" if backbone_path else "the backbone"
    if u_ch != a_ch:
        raise ModelLoadError(adapter_path, f"the motion module's channels {a_ch} do not match {bb} "
                             f"UNet's {u_ch}: it was made for another base model (e.g. an SDXL motion "
                             "module on an SD 1.x backbone).", expected)
    u_layers = _expand(ucfg["layers_per_block"], len(u_ch))
    a_layers = _expand(acfg["motion_layers_per_block"], len(a_ch))
    if u_layers != a_layers:
        raise ModelLoadError(adapter_path, f"the motion module has {a_layers} layers per block, {bb} "
                             f"UNet {u_layers}: it does not match {bb}.", expected + f" and layers_per_block {u_layers}")
    if acfg.get("conv_in_channels") and unet2d.conv_in.weight.shape[1] > acfg["conv_in_channels"]:
        raise ModelLoadError(adapter_path, f"the motion module's input convolution is narrower than {bb}'s "
                             "input: it does not match the backbone.", expected)
    try:
        model = UNetMotionModel.from_unet2d(unet2d, adapter)
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(adapter_path, f"the motion module does not fit {bb} UNet ({exc}): it does not match "
                             "the backbone.",
                             expected) from exc
    return model.eval()  # from_unet2d already matches the backbone's device and dtype


#: the motion modules of a ``UNetMotionModel`` (down / mid / up blocks)
_MOTION_MODULE = re.compile(r"(.*\.)?motion_modules\.\d+$")


def blend_motion(x: torch.Tensor, out: torch.Tensor, scale: float) -> torch.Tensor:
    """A motion module's output at ``scale``: ``x + scale * (module(x) - x)`` (1 = as trained,
    0 = the module skipped, so frames are denoised independently). AnimateDiff-Evolved calls
    this the motion "effect"; AnimateDiff's modules are residual, so it scales their update."""
    if scale == 1.0:
        return out
    return x + (out - x) * scale


def set_motion_scale(motion_unet, scale: float) -> None:
    """Run every motion module of ``motion_unet`` (a ``UNetMotionModel``) at ``scale``
    (:func:`blend_motion`) until changed; hooks are installed on first use and cost nothing at
    1. Raises ``ValueError`` for a non-finite or negative scale, naming ``motion_scale``."""
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"motion_scale: expected a finite number >= 0, got {scale!r}")
    if not getattr(motion_unet, "_fdd_motion_hooks", False):
        mods = [m for n, m in motion_unet.named_modules() if _MOTION_MODULE.match(n)]
        if not mods:
            raise ValueError("motion_scale: this model has no motion modules (not a UNetMotionModel)")

        def hook(module, args, kwargs, out):
            s = motion_unet._fdd_motion_scale
            if s == 1.0:
                return None
            x = args[0] if args else kwargs["hidden_states"]
            return blend_motion(x, out, s)

        for m in mods:
            m.register_forward_hook(hook, with_kwargs=True)
        object.__setattr__(motion_unet, "_fdd_motion_hooks", True)
    object.__setattr__(motion_unet, "_fdd_motion_scale", scale)


def motion_scale_of(motion_unet) -> float:
    """The scale :func:`set_motion_scale` last set (1 when never set)."""
    return float(getattr(motion_unet, "_fdd_motion_scale", 1.0))
