"""Write diffusers ``MotionAdapter`` weights in the ORIGINAL AnimateDiff file layout.

There is no diffusers -> AnimateDiff converter; this is the inverse of
``convert_animatediff_checkpoint_to_diffusers`` plus the ``pos_encoder.pe`` buffers the
original files carry (one per attention block; diffusers keeps one per transformer block).

Original layout of one motion module (``{blk}`` = ``down_blocks.{i}`` / ``up_blocks.{i}`` /
``mid_block``)::

    {blk}.motion_modules.{j}.temporal_transformer.norm.{weight,bias}
    {blk}.motion_modules.{j}.temporal_transformer.proj_in.{weight,bias}
    {blk}.motion_modules.{j}.temporal_transformer.transformer_blocks.{k}.attention_blocks.{0,1}.to_{q,k,v}.weight
    ....attention_blocks.{0,1}.to_out.0.{weight,bias}
    ....attention_blocks.{0,1}.pos_encoder.pe          [1, max_len, C]
    ....norms.{0,1}.{weight,bias}   ff.net.0.proj.*   ff.net.2.*   ff_norm.*
    {blk}.motion_modules.{j}.temporal_transformer.proj_out.{weight,bias}
"""

from __future__ import annotations

import os
import re

import torch

_MM_RE = re.compile(r"^((?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.\d+)\.(.*)$")
_PART = {"attn1": "attention_blocks.0", "attn2": "attention_blocks.1",
         "norm1": "norms.0", "norm2": "norms.1", "norm3": "ff_norm"}


def adapter_to_original(adapter) -> dict[str, torch.Tensor]:
    """diffusers ``MotionAdapter`` (or its state dict) -> original AnimateDiff keys, with
    ``pos_encoder.pe`` buffers for both attention blocks of every transformer block."""
    sd = adapter.state_dict() if hasattr(adapter, "state_dict") else dict(adapter)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = _MM_RE.match(k)
        if not m:
            out[k] = v.detach().clone()
            continue
        head, rest = m.groups()
        parts = rest.split(".")
        if parts[0] == "transformer_blocks" and len(parts) > 2:
            if parts[2] == "pos_embed":  # one diffusers buffer -> the two original ones
                base = f"{head}.temporal_transformer.transformer_blocks.{parts[1]}"
                for a in ("attention_blocks.0", "attention_blocks.1"):
                    out[f"{base}.{a}.pos_encoder.pe"] = v.detach().clone()
                continue
            parts[2] = _PART.get(parts[2], parts[2])
        out[f"{head}.temporal_transformer." + ".".join(parts)] = v.detach().clone()
    return out


def save_animatediff_original(path: str | os.PathLike, adapter) -> str:
    """Save ``adapter`` as an original AnimateDiff file: ``.safetensors`` by extension, else a
    ``torch.save`` pickle of a plain ``{key: tensor}`` dict (readable with ``weights_only=True``,
    like ``mm_sd_v15_v2.ckpt``)."""
    from .state_dict import save_safetensors_atomic

    path = os.fspath(path)
    sd = adapter_to_original(adapter)
    if path.lower().endswith((".safetensors", ".sft")):
        return save_safetensors_atomic(sd, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({k: v.contiguous() for k, v in sd.items()}, path)
    return path
