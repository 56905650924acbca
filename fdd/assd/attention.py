"""Weighted attention fusion (paper: ASSD, Method §Weighted Attention Fusion, Eq. 11-13).

In the editing branch only, the last few *spatial* self-attention layers of the video UNet
compute ``(1 - lambda) * SelfAttn + lambda * RefAttn``, where RefAttn takes its queries from the
edited latent and its keys / values from the reference branch's hidden states at the same layer
and the same frame. Temporal attention (``temp_attentions`` of a UNet3D, ``motion_modules`` of
an AnimateDiff UNet, ``transformer_in``) and cross-attention are never touched.

The layers get a :class:`FusionAttnProcessor` through ``Attention.set_processor`` one by one
(not ``set_attn_processor(dict)``, which wants every layer's key); the original processors are
put back on exit. Per-call state (frames, which batch elements are editing / reference twins,
lambda) lives on the processors, because diffusers drops unknown ``cross_attention_kwargs``.

Two layouts:

- **batched** (default): the reference and editing branches (and their unconditional twins) are
  one UNet batch; the processor pairs each editing element's rows with its reference twin's rows
  in the same call (the hidden states of a video UNet are ``(B * F, tokens, C)``, batch-major).
- **record / inject**: separate UNet calls per branch; a reference call *records* the layer
  inputs, a later editing call *injects* them as keys / values. Used to compare against the
  batched layout (tests, bench), and usable when memory does not allow one batch.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F

#: a spatial self-attention layer of a diffusers UNet (2D, 3D or motion); ``temp_attentions.``,
#: ``motion_modules.`` and ``transformer_in.`` do not match (``attentions`` must follow a dot)
_SPATIAL_ATTN1 = re.compile(r"^(down_blocks\.(\d+)|mid_block|up_blocks\.(\d+))\.attentions\.(\d+)"
                            r"\.transformer_blocks\.(\d+)\.attn1$")


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Spatial self-attention of one frame, paper Eq. 11:

        SelfAttn_i = Softmax(W_q(z^i) W_k(z^i)^T / sqrt(d)) W_v(z^i)

    ``q, k, v`` are the projections of the same frame's tokens, ``(..., heads, tokens, d)``;
    ``scale`` defaults to 1 / sqrt(d)."""
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def reference_attention(q_edit: torch.Tensor, k_ref: torch.Tensor, v_ref: torch.Tensor,
                        scale: float | None = None) -> torch.Tensor:
    """Reference attention, paper Eq. 12:

        RefAttn_i = Softmax(W_q(z^i) W_k(z^^i)^T / sqrt(d)) W_v(z^^i)

    queries from frame i of the editing branch, keys / values from frame i of the reference
    branch at the same layer."""
    return F.scaled_dot_product_attention(q_edit, k_ref, v_ref, scale=scale)


def weighted_attention_fusion(self_attn: torch.Tensor, ref_attn: torch.Tensor, lam: float) -> torch.Tensor:
    """Weighted attention fusion, paper Eq. 13:

        AttnFusion_i = (1 - lambda) * SelfAttn_i + lambda * RefAttn_i,   lambda in [0, 1]

    (paper default 0.8). The output projection W_o that follows is affine, so fusing before it
    (as here) equals fusing the two projected outputs."""
    return (1.0 - lam) * self_attn + lam * ref_attn


def spatial_self_attention_layers(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The spatial self-attention modules (``...attentions.N.transformer_blocks.M.attn1``) of a
    diffusers UNet in *execution* order: down blocks, mid block, up blocks, then attention and
    transformer-block index (``named_modules`` lists the up blocks before the mid block)."""
    found = []
    for name, mod in unet.named_modules():
        m = _SPATIAL_ATTN1.match(name)
        if not m:
            continue
        group = 0 if m.group(1).startswith("down") else (1 if m.group(1) == "mid_block" else 2)
        block = int(m.group(2) or m.group(3) or 0)
        found.append(((group, block, int(m.group(4)), int(m.group(5))), name, mod))
    found.sort(key=lambda x: x[0])
    return [(name, mod) for _, name, mod in found]


def _rows(elements: Sequence[int], frames: int, device) -> torch.Tensor:
    return torch.cat([torch.arange(e * frames, (e + 1) * frames) for e in elements]).to(device)


class FusionAttnProcessor:
    """Attention processor of one fused layer (Eq. 11-13); passes through to ``base`` when idle.

    State, set by :class:`AttentionFusion` before each UNet call:

    - ``mode``: ``"off"`` | ``"batched"`` | ``"record"`` | ``"inject"``;
    - ``frames``: frames per video in the batch (rows of one element = ``frames``);
    - ``pairs``: ``[(edit_element, ref_element), ...]`` (batched mode);
    - ``lam``: lambda of Eq. 13.
    """

    def __init__(self, base, name: str = ""):
        self.base = base
        self.name = name
        self.mode = "off"
        self.frames = 1
        self.pairs: list[tuple[int, int]] = []
        self.lam = 0.8
        self.stored: torch.Tensor | None = None

    def _project(self, attn, x):
        return attn.to_k(x), attn.to_v(x)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs) -> torch.Tensor:
        if self.mode == "off" or encoder_hidden_states is not None or attention_mask is not None:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if self.mode == "record":
            self.stored = hidden_states
            return self.base(attn, hidden_states, None, None, temb)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b4, c4, h4, w4 = hidden_states.shape
            hidden_states = hidden_states.view(b4, c4, h4 * w4).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        n, tokens, _ = hidden_states.shape
        heads = attn.heads
        q = attn.to_q(hidden_states)
        k, v = self._project(attn, hidden_states)
        head_dim = k.shape[-1] // heads

        def split(x):
            return x.view(x.shape[0], -1, heads, head_dim).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = self_attention(q, k, v, scale=attn.scale)
        if self.mode == "batched":
            edit = _rows([e for e, _ in self.pairs], self.frames, q.device)
            ref = _rows([r for _, r in self.pairs], self.frames, q.device)
            ref_out = reference_attention(q[edit], k[ref], v[ref], scale=attn.scale)
            out = out.clone()
            out[edit] = weighted_attention_fusion(out[edit], ref_out, self.lam)
        elif self.mode == "inject":
            if self.stored is None or self.stored.shape != residual.shape:
                raise RuntimeError(f"attention fusion ({self.name}): no recorded reference hidden states "
                                   "of this shape; run the reference branch in 'record' mode first")
            ref_h = self.stored
            if attn.group_norm is not None:
                ref_h = attn.group_norm(ref_h.transpose(1, 2)).transpose(1, 2)
            kr, vr = self._project(attn, ref_h)
            kr, vr = split(kr), split(vr)
            if attn.norm_k is not None:
                kr = attn.norm_k(kr)
            out = weighted_attention_fusion(out, reference_attention(q, kr, vr, scale=attn.scale), self.lam)
        else:
            raise ValueError(f"attention fusion: unknown mode {self.mode!r}")
        out = out.transpose(1, 2).reshape(n, -1, heads * head_dim).to(q.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b4, c4, h4, w4)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class AttentionFusion:
    """Installs :class:`FusionAttnProcessor` on the last ``num_layers`` spatial self-attention
    layers of ``unet`` (a context manager; the original processors are restored on exit).

    ``lam`` is lambda of Eq. 13. Between calls use :meth:`batched`, :meth:`record`,
    :meth:`inject` or :meth:`off` to set the processors' mode for the next UNet call.
    """

    def __init__(self, unet: torch.nn.Module, num_layers: int, lam: float = 0.8):
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"fusion_lambda: expected 0 <= lambda <= 1, got {lam}")
        layers = spatial_self_attention_layers(unet)
        if num_layers < 1:
            raise ValueError(f"fusion_layers: expected >= 1, got {num_layers}")
        if not layers:
            raise ValueError(f"{type(unet).__name__} has no spatial self-attention layers to fuse")
        self.unet = unet
        self.layers = layers[-num_layers:]
        self.lam = float(lam)
        self.processors: list[FusionAttnProcessor] = []
        self._originals: list[tuple[torch.nn.Module, object]] = []

    @property
    def layer_names(self) -> list[str]:
        return [n for n, _ in self.layers]

    def __enter__(self) -> "AttentionFusion":
        for name, mod in self.layers:
            base = mod.processor
            self._originals.append((mod, base))
            proc = FusionAttnProcessor(base, name)
            proc.lam = self.lam
            mod.set_processor(proc)
            self.processors.append(proc)
        return self

    def __exit__(self, *exc) -> bool:
        for mod, base in self._originals:
            mod.set_processor(base)
        self._originals.clear()
        self.processors.clear()
        return False

    def _set(self, mode: str, frames: int = 1, pairs=()) -> None:
        for p in self.processors:
            p.mode, p.frames, p.pairs, p.lam = mode, int(frames), list(pairs), self.lam
            if mode not in ("record", "inject"):
                p.stored = None

    def batched(self, frames: int, pairs: Sequence[tuple[int, int]]) -> None:
        """Next call: one batch; element ``e`` of each ``(e, r)`` pair is fused with element ``r``."""
        self._set("batched", frames, pairs)

    def record(self) -> None:
        """Next call is a reference branch: store each fused layer's input hidden states."""
        self._set("record")

    def inject(self) -> None:
        """Next call is an editing branch: fuse with the hidden states recorded last."""
        self._set("inject")

    def off(self) -> None:
        self._set("off")
