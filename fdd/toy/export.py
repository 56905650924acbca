"""Exports of a trained toy run in the real on-disk formats (LDM single file, diffusers folders,
LDM ControlNet, original AnimateDiff motion module).
"""

from __future__ import annotations

import copy
import json
import os

import torch

from .config import EXPORT
from .factories import make_controlnet, make_motion_adapter, make_unet, make_unet3d
from .toolkit import Toolkit, _final_weights


def _export_dir(out: str) -> str:
    d = os.path.join(out, "export")
    os.makedirs(d, exist_ok=True)
    tokdir = os.path.join(d, EXPORT["tokenizer"])
    if not os.path.isdir(tokdir):
        import shutil

        shutil.copytree(os.path.join(out, "text", "tokenizer"), tokdir)
    return d


def _dest(out: str, dest: str | None, name: str) -> str:
    if dest is None:
        return os.path.join(_export_dir(out), name)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    return dest


def export_backbone(out: str, dtype: torch.dtype = torch.float32, dest: str | None = None) -> str:
    """LDM single file (UNet + VAE + text encoder) at ``dest`` (default ``export/toy_sd1.safetensors``,
    beside ``export/tokenizer/``); load it with ``fdd.models.sd1.load_sd1(path, tokenizer=...)``
    or ship the tokenizer as ``NAME_tokenizer/`` beside it (:func:`fdd.models.sd1.companion_tokenizer`)."""
    from fdd.models.ldm_formats import save_ldm_sd1_checkpoint

    kit = Toolkit(out)
    return save_ldm_sd1_checkpoint(_dest(out, dest, EXPORT["backbone"]), kit.unet, kit.vae, kit.te, dtype=dtype)


def _write_pipeline_folder(d: str, parts: dict, class_name: str, out: str, dtype: torch.dtype) -> str:
    """A diffusers pipeline-style folder ``d`` (``parts``: subfolder -> module, plus the toy
    ``tokenizer/`` and ``model_index.json``), staged and renamed into place."""
    import shutil

    stage = d + ".partial"
    shutil.rmtree(stage, ignore_errors=True)
    from diffusers.utils import logging as dlog

    quiet = dlog.get_verbosity()
    dlog.set_verbosity_error()  # a .to(fp16) copy warns that no module is kept in fp32 (none is)
    try:
        for sub, module in parts.items():
            m = module if dtype == torch.float32 else copy.deepcopy(module).to(dtype)
            m.save_pretrained(os.path.join(stage, sub))
    finally:
        dlog.set_verbosity(quiet)
    shutil.copytree(os.path.join(out, "text", "tokenizer"), os.path.join(stage, "tokenizer"))
    index = {"_class_name": class_name, "tokenizer": ["transformers", "CLIPTokenizer"]}
    for sub, module in parts.items():
        index[sub] = ["transformers" if sub == "text_encoder" else "diffusers", type(module).__name__]
    with open(os.path.join(stage, "model_index.json"), "w") as fh:
        json.dump(index, fh)
    shutil.rmtree(d, ignore_errors=True)
    os.replace(stage, d)
    return d


def export_backbone_diffusers(out: str, dtype: torch.dtype = torch.float32, dest: str | None = None) -> str:
    """The same backbone as a diffusers folder (``unet/``, ``vae/``, ``text_encoder/``,
    ``tokenizer/``): ``load_sd1(folder)`` takes the tokenizer from it."""
    kit = Toolkit(out)
    return _write_pipeline_folder(_dest(out, dest, EXPORT["backbone_diffusers"]),
                                  {"unet": kit.unet, "vae": kit.vae, "text_encoder": kit.te},
                                  "StableDiffusionPipeline", out, dtype)


def export_controlnet(out: str, dtype: torch.dtype = torch.float32, dest: str | None = None) -> str:
    from fdd.models.ldm_formats import save_ldm_controlnet

    cn = make_controlnet(make_unet(0))
    cn.load_state_dict(_final_weights(out, "controlnet"))
    return save_ldm_controlnet(_dest(out, dest, EXPORT["controlnet"]), cn, dtype=dtype)


def export_motion(out: str, dtype: torch.dtype = torch.float32, dest: str | None = None) -> str:
    from fdd.models.motion_formats import save_animatediff_original

    ad = make_motion_adapter(0)
    ad.load_state_dict(_final_weights(out, "motion"))
    return save_animatediff_original(_dest(out, dest, EXPORT["motion"]), ad.to(dtype))


def export_t2v(out: str, dtype: torch.dtype = torch.float32, dest: str | None = None) -> str:
    """A diffusers pipeline-style folder: ``unet/`` (what load_t2v_unet reads), ``vae/``,
    ``text_encoder/``, ``tokenizer/`` (what the ASSD node uses beside it)."""
    kit = Toolkit(out)
    u3 = make_unet3d(0)
    u3.load_state_dict(_final_weights(out, "t2v"))
    return _write_pipeline_folder(_dest(out, dest, EXPORT["t2v"]),
                                  {"unet": u3, "vae": kit.vae, "text_encoder": kit.te},
                                  "TextToVideoSDPipeline", out, dtype)
