"""FFAM, the Fine-coarse Frame Attention Module (EI² §4.4, Eq. 10), and the spatial(-temporal)
self-attention baselines of the paper's Fig. 5 ablation: Tune-A-Video's sparse-causal
attention (first + previous frame) and full spatio-temporal attention (every token of every
frame). All of them run PyTorch's fused ``scaled_dot_product_attention``.

Frames are folded into the batch (pseudo-3D, §4.1): hidden states are ``(B·n, l, d)`` with the
n frames of each video consecutive; ``l = h·w`` tokens of the layer's own spatial size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class FrameState:
    """Per-call state shared by every inflated layer of one model (set by the model's forward
    before the UNet runs): the number of frames per video and the latent's spatial size."""

    num_frames: int = 1
    latent_hw: tuple[int, int] = (0, 0)
    #: key counts seen by the self-attention layers in the last call (benches / tests)
    record_keys: bool = False
    keys_seen: list = field(default_factory=list)


def layer_hw(latent_hw: tuple[int, int], tokens: int) -> tuple[int, int]:
    """Spatial size ``(h, w)`` of a UNet layer with ``tokens`` = h·w tokens, from the latent's
    size: SD's downsamplers (3x3 conv, stride 2, padding 1) map a side s to ceil(s / 2)."""
    h, w = int(latent_hw[0]), int(latent_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError("frame state: the latent size is not set (call the model through InflatedUNet)")
    while h * w > tokens:
        h, w = -(-h // 2), -(-w // 2)
    if h * w != tokens:
        raise ValueError(f"cannot place {tokens} tokens on a grid derived from the latent size {latent_hw}")
    return h, w


def downsample_tokens(x: torch.Tensor, hw: tuple[int, int], ratio: int, mode: str = "avg") -> torch.Tensor:
    """``downsample(·, r)`` of EI² Eq. 10 on tokens ``(N, h·w, d)``: ratio 1/r² in tokens,
    r x r average pooling (``"avg"``) or every r-th token in each direction (``"nearest"``).
    Sides that r does not divide keep a partial last cell (ceil(h / r) x ceil(w / r) tokens)."""
    if ratio == 1:
        return x
    N, _, d = x.shape
    h, w = hw
    grid = x.transpose(1, 2).reshape(N, d, h, w)
    if mode == "avg":
        out = F.avg_pool2d(grid, kernel_size=ratio, stride=ratio, ceil_mode=True)
    elif mode == "nearest":
        out = grid[:, :, ::ratio, ::ratio]
    else:
        raise ValueError(f"ffam_downsample: expected 'avg' or 'nearest', got {mode!r}")
    return out.reshape(N, d, -1).transpose(1, 2)


_INDEX_CACHE: dict = {}


def _other_frames(n: int, device) -> torch.Tensor:
    """``(n, n-1)`` index of the frames j != i for every frame i, cached per device (building it
    from a Python list on every call would be a host-to-device copy per layer on GPUs)."""
    key = (n, str(device))
    idx = _INDEX_CACHE.get(key)
    if idx is None:
        idx = torch.tensor([[j for j in range(n) if j != i] for i in range(n)], dtype=torch.long).to(device)
        if len(_INDEX_CACHE) > 64:
            _INDEX_CACHE.clear()
        _INDEX_CACHE[key] = idx
    return idx


def ffam_context(tokens: torch.Tensor, num_frames: int, hw: tuple[int, int], ratio: int,
                 mode: str = "avg") -> torch.Tensor:
    """The fine-coarse context of EI² Eq. 10 for every frame i:

        z_FC^i = concat[ z^i, {downsample(z^j, r)}_{j≠i} ]  ∈ R^{(l + (n−1)·l/r²) × d}

    ``tokens`` is ``(B·n, l, d)``; returns ``(B·n, l + (n−1)·l_c, d)`` with l_c = ceil(h/r)·ceil(w/r)
    (= l / r² when r divides the layer's sides). Frame i's own tokens come first at full
    resolution, then the other frames in temporal order, coarse.

    Eq. 10 downsamples the features z and then projects keys and values from z_FC; average
    pooling and strided selection are linear and act per channel, so they commute with the
    projections W_k, W_v: applying this to K = zW_k and V = zW_v gives the same keys and values
    while every frame is projected once (that is how the processor uses it).
    """
    Bn, _, d = tokens.shape
    n = int(num_frames)
    if n == 1:
        return tokens
    B = Bn // n
    coarse = downsample_tokens(tokens, hw, ratio, mode)
    lc = coarse.shape[1]
    coarse = coarse.view(B, n, lc, d)
    gathered = coarse[:, _other_frames(n, tokens.device)]  # (B, n, n-1, lc, d)
    gathered = gathered.reshape(B * n, (n - 1) * lc, d)
    return torch.cat([tokens, gathered], dim=1)


def sparse_causal_context(tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Tune-A-Video's sparse-causal attention context (Wu et al. 2023, §4.1; EI² §4.4 "SCA"):
    frame i attends to the tokens of the first frame and of frame i−1 (frame 0: the first frame
    twice, as in Tune-A-Video's code). ``(B·n, l, d)`` -> ``(B·n, 2l, d)``."""
    Bn, l, d = tokens.shape
    n = int(num_frames)
    B = Bn // n
    t = tokens.view(B, n, l, d)
    first = t[:, :1].expand(B, n, l, d)
    prev = torch.cat([t[:, :1], t[:, :-1]], dim=1)  # frame i-1, frame 0 for frame 0
    return torch.cat([first, prev], dim=2).reshape(Bn, 2 * l, d)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    N, L, inner = x.shape
    return x.view(N, L, heads, inner // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    N, H, L, hd = x.shape
    return x.transpose(1, 2).reshape(N, L, H * hd)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention, EI² Eq. 3: ``softmax(Q Kᵀ / sqrt(d)) V`` per head, fused SDPA.
    ``q`` ``(N, Lq, inner)``, ``k``/``v`` ``(N, Lk, inner)`` -> ``(N, Lq, inner)``."""
    out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads))
    return _merge(out).to(q.dtype)


def full_spatiotemporal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int,
                                  heads: int) -> torch.Tensor:
    """Full spatio-temporal self-attention (EI² §5.2, Fig. 5 baseline): every token of every
    frame attends to all n·l tokens of its video, O(n² l²). Computed as one attention over the
    video's n·l tokens (no copies of keys per frame)."""
    Bn, l, inner = q.shape
    n = int(num_frames)
    B = Bn // n
    out = attend(q.reshape(B, n * l, inner), k.reshape(B, n * l, inner), v.reshape(B, n * l, inner), heads)
    return out.reshape(Bn, l, inner)


class EI2SelfAttnProcessor:
    """diffusers attention processor for the inflated self-attention (attn1) of SD transformer
    blocks: ``"ffam"`` (Eq. 10), ``"sparse_causal"``, ``"full"`` or ``"frame"``.

    Per-call state (frames, latent size) is read from the shared :class:`FrameState`, since
    diffusers drops unknown ``cross_attention_kwargs``. W_q, W_k, W_v, W_out are the block's own
    attn1 projections (W_Q is tuned in §5)."""

    def __init__(self, mode: str, state: FrameState, ratio: int = 2, downsample: str = "avg"):
        self.mode, self.state, self.ratio, self.downsample = mode, state, int(ratio), downsample

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise NotImplementedError("EI² self-attention: masks and cross inputs are not supported on attn1")
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_q is not None:
            raise NotImplementedError("EI² self-attention: only SD 1.x-style attention layers are supported")
        residual = hidden_states
        n = int(self.state.num_frames)
        Bn, l, _ = hidden_states.shape
        if Bn % n:
            raise ValueError(f"self-attention: batch {Bn} is not a multiple of {n} frames")
        q = attn.to_q(hidden_states)
        k = attn.to_k(hidden_states)
        v = attn.to_v(hidden_states)
        heads = attn.heads
        if self.mode == "full" and n > 1:
            out = full_spatiotemporal_attention(q, k, v, n, heads)
            keys = n * l
        else:
            if self.mode == "ffam" and n > 1:
                hw = layer_hw(self.state.latent_hw, l)
                k = ffam_context(k, n, hw, self.ratio, self.downsample)
                v = ffam_context(v, n, hw, self.ratio, self.downsample)
            elif self.mode == "sparse_causal" and n > 1:
                k = sparse_causal_context(k, n)
                v = sparse_causal_context(v, n)
            out = attend(q, k, v, heads)
            keys = k.shape[1]
        if self.state.record_keys:
            self.state.keys_seen.append((l, keys))
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def expected_ffam_keys(tokens: int, num_frames: int, ratio: int) -> int:
    """l + (n − 1)·l / r² (EI² Eq. 10's context length, r dividing the sides)."""
    return tokens + (num_frames - 1) * tokens // (ratio * ratio)


def attention_matrix_elements(mode: str, tokens: int, num_frames: int, ratio: int = 2, heads: int = 1,
                              batch: int = 1) -> int:
    """Entries of the attention matrices of one self-attention layer (queries x keys, all heads),
    the quadratic term of each mode's memory: FFAM n·l·(l + (n−1)l/r²) (EI² §4.4's
    O((n−1+r²)/r² · n l²)), sparse-causal n·l·2l, full (n·l)², per frame n·l²."""
    n, l = num_frames, tokens
    if mode == "ffam":
        k = l + (n - 1) * math.ceil(l / (ratio * ratio)) if n > 1 else l
        per = n * l * k
    elif mode == "sparse_causal":
        per = n * l * (2 * l if n > 1 else l)
    elif mode == "full":
        per = (n * l) ** 2
    elif mode == "frame":
        per = n * l * l
    else:
        raise ValueError(f"mode: unknown attention mode {mode!r}")
    return per * heads * batch
