"""STAM, the Shift-restricted Temporal Attention Module (EI² §4.3), and the temporal-attention
baselines of the paper's Fig. 4 ablation (Tune-A-Video's TA module with LayerNorm, LN without
affine, InstanceNorm, IC without spectral norm).

The temporal module sees, for every spatial location of every video, the sequence of its
``n`` frame features ``z ∈ R^{n×d}`` (Tune-A-Video's "(b f) d c -> (b d) f c" rearrangement).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import InflationConfig


def instance_centering(z: torch.Tensor, axis: str = "frames") -> torch.Tensor:
    """Instance Centering, EI² Eq. 6: ``IC(z) = z − (1/n) Σ_i z^i`` for temporal data
    ``z ∈ R^{n×d}``, applied to every sample of a batch on its own.

    ``z`` is ``(..., n, d)`` (frames, then channels). ``axis``:

    - ``"frames"`` (Eq. 6, default): subtract the mean over the n frames, separately per channel
      (and per spatial location and video, which live in the leading dims). This is the axis
      the paper's argument needs: the mean over time of each channel is what the temporal
      attention would otherwise shift (μ_rv(z) in Objective 5), and the temporal variance of
      each channel is preserved exactly (a shift does not change a variance). There is no
      division by a standard deviation (§4.3 (a): rescaling would amplify the small temporal
      variances).
    - ``"channels"``: subtract each token's mean over its d channels (what LayerNorm centres).
    - ``"frames_channels"``: subtract the mean over frames and channels together (the mean
      μ_z = 1/(nd) Σ z^{ij} that §4.3 says LayerNorm computes).
    """
    if axis == "frames":
        return z - z.mean(dim=-2, keepdim=True)
    if axis == "channels":
        return z - z.mean(dim=-1, keepdim=True)
    if axis == "frames_channels":
        return z - z.mean(dim=(-2, -1), keepdim=True)
    raise ValueError(f"centering_axis: expected 'frames', 'channels' or 'frames_channels', got {axis!r}")


def instance_norm_frames(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm (Ulyanov et al. 2016) over the frames, the "IN" variant of EI² Fig. 4:
    ``(z − mean_n z) / sqrt(var_n z + eps)`` per channel, no affine. ``z`` is ``(..., n, d)``."""
    mu = z.mean(dim=-2, keepdim=True)
    var = z.var(dim=-2, unbiased=False, keepdim=True)
    return (z - mu) / torch.sqrt(var + eps)


@torch.no_grad()
def power_iteration(weight: torch.Tensor, left: torch.Tensor, right: torch.Tensor, iterations: int = 1):
    """Power iteration for the top singular pair of ``weight`` (``out × in``), Miyato et al. (2018),
    run on a block of k vectors at once (subspace iteration with a Rayleigh-Ritz step; k = 1 is
    Miyato's single-vector iteration): ``R ← orth(Wᵀ L)``, ``L ← orth(W R)``, then the top singular
    pair of the small ``Lᵀ W R``. A block tracks the top direction far better than one vector
    when the leading singular values are close (random square matrices: σ₂/σ₁ ≈ 0.95) and the
    weights move during tuning. Returns (u, v, left, right): top left / right vectors and the
    updated bases (``out × k``, ``in × k``)."""
    w = weight.detach().float()
    L, R = left.float(), right.float()
    for _ in range(max(0, int(iterations))):
        R = torch.linalg.qr(w.t() @ L).Q
        L = torch.linalg.qr(w @ R).Q
    P, _, Qh = torch.linalg.svd(L.t() @ w @ R)
    u = F.normalize(L @ P[:, 0], dim=0, eps=1e-12)
    v = F.normalize(R @ Qh[0], dim=0, eps=1e-12)
    if torch.dot(u, w @ v) < 0:
        u = -u
    return u, v, L, R


@torch.no_grad()
def exact_singular_vectors(weight: torch.Tensor, k: int = 1):
    """Top left / right singular vectors of ``weight`` by SVD (float32) and the top-k bases,
    so the first spectral estimate after inflation is exact rather than a guess."""
    U, _, Vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    return U[:, 0].contiguous(), Vh[0].contiguous(), U[:, :k].contiguous(), Vh[:k].t().contiguous()


def spectral_normalize(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Spectral normalisation of EI² Eq. 8 (Miyato et al. 2018): ``W̄ = W / σ_max(W)`` with
    ``σ_max(W) ≈ uᵀ W v`` from the stored singular-vector estimates ``u``, ``v`` (constants for
    autograd, as in Miyato et al.; exact after inflation, then refreshed by
    :func:`power_iteration` before every optimiser step).
    σ is computed in float32 whatever the weight's dtype."""
    sigma = torch.dot(u.float(), weight.float() @ v.float())
    return weight / sigma.to(weight.dtype)


class SNLinear(nn.Module):
    """``Linear(z) = z W̄ + b`` with W̄ spectrally normalised (Eq. 8). Keeps the raw ``weight``,
    the top singular-vector estimates ``u`` (out) and ``v`` (in) that give σ, and the bases of
    the block power iteration (``left`` out × k, ``right`` in × k). All are saved with the module,
    so a reloaded one computes exactly the same W̄."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, subspace: int = 8):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        k = max(1, min(int(subspace), in_features, out_features))
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_buffer("u", torch.zeros(out_features))
        self.register_buffer("v", torch.zeros(in_features))
        self.register_buffer("left", torch.zeros(out_features, k))
        self.register_buffer("right", torch.zeros(in_features, k))

    def normalized_weight(self) -> torch.Tensor:
        return spectral_normalize(self.weight, self.u, self.v)

    @torch.no_grad()
    def init_singular_vectors(self) -> None:
        u, v, L, R = exact_singular_vectors(self.weight, self.left.shape[1])
        for buf, val in ((self.u, u), (self.v, v), (self.left, L), (self.right, R)):
            buf.copy_(val.to(buf.dtype))

    @torch.no_grad()
    def refresh(self, iterations: int = 1) -> None:
        u, v, L, R = power_iteration(self.weight, self.left, self.right, iterations)
        for buf, val in ((self.u, u), (self.v, v), (self.left, L), (self.right, R)):
            buf.copy_(val.to(buf.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)


def _init_linear(weight: torch.Tensor, bias: torch.Tensor | None, gen: torch.Generator) -> None:
    """PyTorch's default ``nn.Linear`` initialisation (kaiming-uniform, a = sqrt(5)), drawn
    from ``gen`` so inflation is reproducible."""
    fan_in = weight.shape[1]
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        weight.copy_(torch.empty(weight.shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen))
        if bias is not None:
            bias.zero_()


def temporal_attention(zn: torch.Tensor, to_q, to_k, to_v, heads: int) -> torch.Tensor:
    """Self-attention over the frames, EI² Eq. 3 / Eq. 8: ``M_{Q,K} V`` with
    ``M = softmax(Q Kᵀ / sqrt(d))``, Q = zn W_q, K = zn W_k, V = zn W̄_v (W̄_v spectrally
    normalised in STAM). ``zn`` is the normalised input ``(N, n, d)``; multi-head, fused SDPA."""
    N, n, _ = zn.shape
    q, k, v = to_q(zn), to_k(zn), to_v(zn)
    inner = q.shape[-1]
    hd = inner // heads
    q, k, v = (t.view(N, n, heads, hd).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(N, n, inner)


def stam_residual(z: torch.Tensor, attended: torch.Tensor, to_out, gate: torch.Tensor | None) -> torch.Tensor:
    """The residual form of EI² Eq. 9, ``STAM(z) = z + Linear(Attention(IC(z), IC(z)))`` with
    ``Linear(a) = a W̄_L + b`` (Eq. 8); the same form as the Transformer of Eq. 4 used by
    Tune-A-Video's TA module (then with plain W_L). ``gate`` (optional, per channel) scales the
    Linear's output by tanh(gate): zero at initialisation, so the module starts as the identity
    (see :class:`fdd.ei2.config.InflationConfig` ``identity_init``)."""
    out = to_out(attended)
    if gate is not None:
        out = out * torch.tanh(gate).to(out.dtype)
    return z + out


class TemporalModule(nn.Module):
    """STAM (EI² Eq. 9) or one of its Fig. 4 baselines, on hidden states ``(B·n, l, d)``.

    ``state`` is the shared per-call frame state (``num_frames``); the module rearranges to
    ``(B·l, n, d)``, normalises (IC / LN / IN / none), attends over frames with W_q, W_k and
    (spectral-normalised) W_v, projects with (spectral-normalised) W_L + b, gates and adds the
    residual. Parameters: ``to_q``, ``to_k``, ``to_v``, ``to_out`` (+ ``norm`` for LayerNorm,
    ``gate`` for the gated identity init). All of them are tuned (§5).
    """

    def __init__(self, dim: int, heads: int, config: InflationConfig, state, gen: torch.Generator):
        super().__init__()
        self.dim, self.heads, self.state = dim, heads, state
        self.norm_kind = config.temporal_norm
        self.axis = config.centering_axis
        self.spectral = bool(config.spectral_norm)
        if dim % heads:
            raise ValueError(f"heads: {heads} does not divide the block width {dim}")
        self.norm = None
        if config.temporal_norm == "layer_norm":
            self.norm = nn.LayerNorm(dim)
        elif config.temporal_norm == "layer_norm_no_affine":
            self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        if self.spectral:
            k = config.spectral_subspace
            self.to_v = SNLinear(dim, dim, bias=False, subspace=k)
            self.to_out = SNLinear(dim, dim, bias=True, subspace=k)
        else:
            self.to_v = nn.Linear(dim, dim, bias=False)
            self.to_out = nn.Linear(dim, dim, bias=True)
        for m in (self.to_q, self.to_k, self.to_v, self.to_out):
            _init_linear(m.weight, m.bias, gen)
        if config.identity_init == "zero_output":
            with torch.no_grad():
                self.to_out.weight.zero_()
                self.to_out.bias.zero_()
        self.gate = nn.Parameter(torch.zeros(dim)) if config.identity_init == "gate" else None
        if self.spectral:
            self.to_v.init_singular_vectors()
            self.to_out.init_singular_vectors()

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """The norm(·) in front of the attention: IC (Eq. 6), LN (Eq. 4), IN, or nothing."""
        if self.norm_kind == "instance_centering":
            return instance_centering(z, self.axis)
        if self.norm_kind == "instance_norm":
            return instance_norm_frames(z)
        if self.norm is not None:
            return self.norm(z)
        return z

    def spectral_layers(self) -> list[SNLinear]:
        return [m for m in (self.to_v, self.to_out) if isinstance(m, SNLinear)]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        n = int(self.state.num_frames)
        Bn, l, d = hidden_states.shape
        if Bn % n:
            raise ValueError(f"temporal module: batch {Bn} is not a multiple of {n} frames")
        B = Bn // n
        z = hidden_states.view(B, n, l, d).permute(0, 2, 1, 3).reshape(B * l, n, d)
        zn = self.normalize(z)
        attended = temporal_attention(zn, self.to_q, self.to_k, self.to_v, self.heads)
        out = stam_residual(z, attended, self.to_out, self.gate)
        return out.view(B, l, n, d).permute(0, 2, 1, 3).reshape(Bn, l, d)
