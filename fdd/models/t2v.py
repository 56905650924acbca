"""Text-to-video UNet3D loader (ModelScope ``text-to-video-ms-1.7b``, ``zeroscope_v2_*``).

These models ship as diffusers folders only; the loader reads them locally (no hub access):
either the pipeline folder (``model_index.json`` + ``unet/``) or the ``unet`` folder itself.
"""

from __future__ import annotations

import glob
import os

import torch

from .errors import ModelLoadError
from .state_dict import read_json_file

_EXPECTED = ("a diffusers text-to-video folder (ModelScope text-to-video-ms-1.7b / zeroscope_v2) or its "
             "unet/ subfolder, with config.json for a UNet3DConditionModel and its weights")
_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                 "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")


def _find_unet_dir(folder: str) -> str:
    if not os.path.isdir(folder):
        raise ModelLoadError(folder, "no such folder.", _EXPECTED)
    sub = os.path.join(folder, "unet")
    if os.path.isfile(os.path.join(sub, "config.json")):
        return sub
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        raise ModelLoadError(folder, "the pipeline folder has no unet/config.json.", _EXPECTED)
    raise ModelLoadError(folder, "no config.json (neither in the folder nor in unet/).", _EXPECTED)


def _weight_variant(unet_dir: str) -> str | None:
    """None when plain weight files exist, else the variant (``fp16``) of the only weights present."""
    if any(os.path.isfile(os.path.join(unet_dir, n)) for n in _WEIGHT_NAMES):
        return None
    for pattern in ("diffusion_pytorch_model.*.safetensors", "diffusion_pytorch_model.*.bin"):
        for f in sorted(glob.glob(os.path.join(unet_dir, pattern))):
            parts = os.path.basename(f).split(".")
            if len(parts) == 3 and "-of-" not in parts[1]:
                return parts[1]
    raise ModelLoadError(unet_dir, "the UNet folder has no weights (diffusion_pytorch_model.safetensors "
                         "or .bin).", _EXPECTED)


def load_t2v_unet(folder: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load a ``diffusers.UNet3DConditionModel`` from a local folder (eval mode, ``dtype``).

    Accepts the pipeline folder (with a ``unet/`` subfolder) or the unet folder. Raises
    :class:`ModelLoadError` when config.json is missing, names another class than
    ``UNet3DConditionModel``, or the weights are missing / incomplete. Uses
    ``UNet3DConditionModel.from_pretrained(dir, local_files_only=True, torch_dtype=dtype,
    output_loading_info=True)`` and refuses missing or mis-shaped keys.

    Call the result with ``sample`` ``(B, C, F, H, W)`` and ``encoder_hidden_states`` ``(B, L, D)``
    (UNet3DConditionModel repeats the text per frame itself).
    """
    from diffusers import UNet3DConditionModel

    folder = os.fspath(folder)
    unet_dir = _find_unet_dir(folder)
    cfg_path = os.path.join(unet_dir, "config.json")
    cfg = read_json_file(cfg_path, _EXPECTED)
    cls_name = cfg.get("_class_name") if isinstance(cfg, dict) else None
    if cls_name != "UNet3DConditionModel":
        raise ModelLoadError(unet_dir, f"config.json describes a {cls_name!r}, not a UNet3DConditionModel "
                             "(a text-to-video UNet).", _EXPECTED)
    variant = _weight_variant(unet_dir)
    try:
        model, info = UNet3DConditionModel.from_pretrained(
            unet_dir, local_files_only=True, torch_dtype=dtype, variant=variant, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(unet_dir, f"diffusers could not load the UNet3D ({exc}).", _EXPECTED) from exc
    bad = [k for k in ("missing_keys", "mismatched_keys") if info.get(k)]
    if bad:
        raise ModelLoadError(unet_dir, "the weights do not fit config.json: "
                             + ", ".join(f"{k}={list(info[k])[:3]}" for k in bad) + ".", _EXPECTED)
    return model.eval()
