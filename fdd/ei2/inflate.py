"""Inflating a 2-D SD UNet into EI²'s video UNet (§4.1) and the tuned-parameter set of §5.

Inflation works on a *copy* of the backbone's UNet (the cached backbone is shared by other
nodes and may hold inference tensors): every spatial layer stays as it is and sees the frames
folded into the batch (pseudo-3D convolutions), each transformer block gets

- its self-attention (attn1) replaced by FFAM (or a baseline, :mod:`fdd.ei2.ffam`), and
- a temporal module (STAM or a baseline, :mod:`fdd.ei2.stam`) appended, as Tune-A-Video does.

Parameter names stay the diffusers names (``down_blocks.0.attentions.0.transformer_blocks.0
.attn1.to_q.weight``); the temporal modules add ``....transformer_blocks.0.temporal.*``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..memory import Placed
from ..video import frame_batch, unframe_batch
from .config import InflationConfig
from .ffam import EI2SelfAttnProcessor, FrameState
from .stam import SNLinear, TemporalModule

try:  # diffusers >= 0.25 layout
    from diffusers.models.attention import BasicTransformerBlock
except ImportError:  # pragma: no cover
    from diffusers.models.attention_processor import BasicTransformerBlock  # type: ignore


class EI2TransformerBlock(BasicTransformerBlock):
    """A diffusers ``BasicTransformerBlock`` with a temporal module (``self.temporal``).

    Instances are made by re-classing an existing block (its weights and names are kept).
    ``temporal_position`` ``"after_ff"``: the block runs as before, then the temporal module
    (Tune-A-Video's placement); ``"after_cross_attention"``: self-attention, cross-attention,
    temporal module, feed-forward (SD 1.x LayerNorm blocks only)."""

    temporal: nn.Module
    temporal_position: str = "after_ff"

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, timestep=None, cross_attention_kwargs=None,
                class_labels=None, added_cond_kwargs=None):
        if self.temporal_position == "after_ff":
            out = super().forward(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                  timestep, cross_attention_kwargs, class_labels, added_cond_kwargs)
            return self.temporal(out)
        if self.norm_type != "layer_norm" or self.pos_embed is not None or self.only_cross_attention:
            raise NotImplementedError("temporal_position 'after_cross_attention' supports SD 1.x blocks only")
        ca = dict(cross_attention_kwargs or {})
        h = hidden_states
        h = self.attn1(self.norm1(h), attention_mask=attention_mask, **ca) + h
        if self.attn2 is not None:
            h = self.attn2(self.norm2(h), encoder_hidden_states=encoder_hidden_states,
                           attention_mask=encoder_attention_mask, **ca) + h
        h = self.temporal(h)
        return self.ff(self.norm3(h)) + h


def detached_copy(module: nn.Module, dtype: torch.dtype | None = None, device=None) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers are fresh, ordinary tensors (made outside
    inference mode, so they can take part in autograd even when ``module`` was loaded under
    ``torch.inference_mode``). Diffusers models are rebuilt from their config on the meta device
    and assigned clones (one copy of the weights in memory, not two); anything else is
    deep-copied and then cloned."""
    with torch.inference_mode(False):
        state = {k: v.detach().clone().to(device=device or v.device,
                                           dtype=(dtype if (dtype is not None and v.is_floating_point()) else v.dtype))
                 for k, v in module.state_dict().items()}
        new = None
        if hasattr(type(module), "from_config") and hasattr(module, "config"):
            try:
                with torch.device("meta"):
                    new = type(module).from_config(module.config)
                new.load_state_dict(state, strict=True, assign=True)
                if any(t.is_meta for t in list(new.parameters()) + list(new.buffers())):
                    new = None
            except (TypeError, ValueError, RuntimeError, AttributeError):  # exotic modules: deepcopy below
                new = None
        if new is None:
            new = copy.deepcopy(module)
            new.load_state_dict(state, strict=True, assign=True)
        new.train(module.training)
        return new.requires_grad_(False)


class InflatedUNet(Placed, nn.Module):
    """EI²'s video UNet: the inflated diffusers UNet plus the per-call frame state.

    ``forward(sample (B, C, n, h, w), timestep, encoder_hidden_states (B, L, D))`` returns the
    noise prediction ``(B, C, n, h, w)``; the frames are folded into the batch."""

    def __init__(self, unet: nn.Module, config: InflationConfig, state: FrameState):
        super().__init__()
        self.unet = unet
        self.config = config
        self.state = state

    def temporal_modules(self) -> list[TemporalModule]:
        return [m for m in self.unet.modules() if isinstance(m, TemporalModule)]

    def spectral_layers(self) -> list[SNLinear]:
        return [m for m in self.unet.modules() if isinstance(m, SNLinear)]

    @torch.no_grad()
    def refresh_spectral_norms(self, iterations: int = 1) -> None:
        """One power-iteration update of every spectral-normalised layer's u, v (Miyato et al.
        2018); the trainer calls it once before every optimisation step."""
        for m in self.spectral_layers():
            m.refresh(iterations)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        if sample.dim() != 5:
            raise ValueError(f"sample: expected video latents (B, C, frames, h, w), got {tuple(sample.shape)}")
        B, C, n, h, w = sample.shape
        self.state.num_frames = n
        self.state.latent_hw = (h, w)
        x = frame_batch(sample)
        emb = encoder_hidden_states
        if emb.shape[0] != B:
            raise ValueError(f"encoder_hidden_states: batch {emb.shape[0]} differs from the latents' {B}")
        emb = emb.repeat_interleave(n, dim=0)
        t = torch.as_tensor(timestep, device=sample.device)
        if t.dim() == 0:
            t = t.expand(B * n)
        elif t.shape[0] == B:
            t = t.repeat_interleave(n)
        out = self.unet(x, t, encoder_hidden_states=emb, return_dict=False)[0]
        return unframe_batch(out, B)


def transformer_blocks(unet: nn.Module) -> list[tuple[str, BasicTransformerBlock]]:
    return [(name, m) for name, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]


def inflate_unet(unet: nn.Module, config: InflationConfig | None = None, *, copy_weights: bool = True,
                 dtype: torch.dtype | None = torch.float32) -> InflatedUNet:
    """Inflate a 2-D SD UNet (``UNet2DConditionModel``) into EI²'s video UNet (§4.1).

    With ``copy_weights`` (default) the input UNet is left untouched: the inflated model owns a
    detached copy (see :func:`detached_copy`) in ``dtype`` (float32 by default: the tuned
    weights need full-precision masters). New weights are drawn from ``config.seed``; the
    spectral-norm singular vectors start exact (SVD). Everything is frozen; call
    :func:`set_trainable` to unfreeze the §5 set.
    """
    config = (config or InflationConfig()).validate()
    with torch.inference_mode(False):
        base = detached_copy(unet, dtype=dtype) if copy_weights else unet
        state = FrameState()
        blocks = transformer_blocks(base)
        if not blocks:
            raise ValueError("unet: no transformer blocks found; EI² inflates SD-style UNets with "
                             "BasicTransformerBlock layers")
        gen = torch.Generator().manual_seed(int(config.seed))
        for name, block in blocks:
            block.__class__ = EI2TransformerBlock
            block.temporal_position = config.temporal_position
            if config.temporal_module:
                dim = block.attn1.to_q.in_features
                heads = config.heads or block.attn1.heads
                p = next(block.parameters())
                block.temporal = TemporalModule(dim, heads, config, state, gen).to(device=p.device, dtype=p.dtype)
            else:
                block.temporal = nn.Identity()
        if config.attention != "frame":
            procs = {}
            for key, proc in base.attn_processors.items():
                if key.endswith("attn1.processor"):
                    procs[key] = EI2SelfAttnProcessor(config.attention, state, config.ffam_ratio,
                                                      config.ffam_downsample)
                else:
                    procs[key] = proc
            base.set_attn_processor(procs)
        model = InflatedUNet(base, config, state)
        model.requires_grad_(False)
        model.eval()
    return model


# --------------------------------------------------------------------------------------------
# the tuned set (§5) and its save / load


#: §5: "tune W_Q of the FFAM and CA Modules, and all parameters of STAMs"
_TRAINABLE = re.compile(r"(^|\.)(attn1\.to_q|attn2\.to_q|temporal)\.")


def is_tuned_name(name: str) -> bool:
    """Whether a parameter (diffusers name) belongs to the tuned set of EI² §5: W_Q of the
    self-attention (FFAM) and of the cross-attention, and every parameter of the temporal
    modules (STAM)."""
    return bool(_TRAINABLE.search(name))


def set_trainable(model: InflatedUNet) -> list[tuple[str, nn.Parameter]]:
    """Freeze everything, then unfreeze the §5 set; returns ``(name, parameter)`` pairs."""
    model.requires_grad_(False)
    out = []
    for name, p in model.unet.named_parameters():
        if is_tuned_name(name):
            p.requires_grad_(True)
            out.append((name, p))
    return out


def tuned_state_dict(model: InflatedUNet) -> dict[str, torch.Tensor]:
    """The tensors a tuned model adds to its base UNet: the tuned parameters and the
    spectral-norm buffers (``u``, ``v``) of the temporal modules. Detached, on the CPU,
    in float32."""
    out = {}
    for name, t in list(model.unet.named_parameters()) + list(model.unet.named_buffers()):
        if is_tuned_name(name):
            out[name] = t.detach().to("cpu", torch.float32).clone()
    return out


def load_tuned_state(model: InflatedUNet, tensors: Mapping[str, torch.Tensor], source: str | None = None) -> None:
    """Copy tuned tensors into an inflated model (strict: same keys and shapes)."""
    from ..models.errors import ModelLoadError
    from ..models.state_dict import key_mismatch_report

    expected = {name: t for name, t in list(model.unet.named_parameters()) + list(model.unet.named_buffers())
                if is_tuned_name(name)}
    problem = key_mismatch_report(expected, tensors)
    if problem:
        raise ModelLoadError(source, "the tuned EI² weights do not fit this backbone inflated with the "
                             f"file's settings: {problem}.",
                             "EI² weights tuned on this SD 1.x backbone (same architecture)")
    with torch.inference_mode(False), torch.no_grad():
        for name, t in expected.items():
            t.copy_(tensors[name].to(device=t.device, dtype=t.dtype))


def base_fingerprint(unet: nn.Module) -> dict:
    """A cheap description of the base UNet a tuned file belongs to (architecture + a checksum
    of its conv_in weights), stored in the metadata and checked on resume."""
    cfg = getattr(unet, "config", {})
    conv = getattr(unet, "conv_in", None)
    checksum = float(conv.weight.detach().double().sum()) if conv is not None else 0.0
    return {"class": type(unet).__name__,
            "block_out_channels": list(cfg.get("block_out_channels", [])) if hasattr(cfg, "get") else [],
            "cross_attention_dim": cfg.get("cross_attention_dim") if hasattr(cfg, "get") else None,
            "conv_in_sum": round(checksum, 4)}


def base_differences(stored: dict, now: dict, rel_tol: float, scale_by_stored: bool = True) -> list[str]:
    """What differs between two :func:`base_fingerprint` s: any architecture field, a field one
    side lacks, or ``conv_in`` checksums further apart than ``rel_tol`` times the larger of 1 and
    the stored (or, with ``scale_by_stored`` off, the current) checksum."""
    diffs = [f"{k} {stored.get(k)} vs {now.get(k)}" for k in sorted(set(stored) | set(now))
             if k != "conv_in_sum" and stored.get(k) != now.get(k)]
    a, b = stored.get("conv_in_sum"), now.get("conv_in_sum")
    if a is None or b is None or abs(a - b) > rel_tol * max(1.0, abs(a if scale_by_stored else b)):
        diffs.append(f"conv_in checksum {a} vs {b} (other weights)")
    return diffs


def metadata_json(obj) -> str:
    return json.dumps(obj, sort_keys=True)


def parameters_summary(named: Iterable[tuple[str, nn.Parameter]]) -> dict:
    named = list(named)
    return {"tensors": len(named), "parameters": int(sum(p.numel() for _, p in named))}
