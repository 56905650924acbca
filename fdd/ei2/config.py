"""Settings of EI² inflation (paper §4) with a switch for every component the paper ablates
(§5.2, Fig. 4-5), serialisable into the metadata of a tuned-weights file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..params import param

#: the spatial self-attention of every transformer block (§4.4 and the Fig. 5 ablation)
ATTENTION_MODES = ("ffam", "sparse_causal", "full", "frame")
#: the normalisation in front of the temporal attention (§4.3 and the Fig. 4 ablation)
TEMPORAL_NORMS = ("instance_centering", "layer_norm", "layer_norm_no_affine", "instance_norm", "none")
#: the axes Instance Centering subtracts the mean over (Eq. 6 is "frames")
CENTERING_AXES = ("frames", "channels", "frames_channels")
#: how the temporal module is made the identity at initialisation
IDENTITY_INITS = ("gate", "zero_output", "none")
#: where the temporal module sits in the transformer block
TEMPORAL_POSITIONS = ("after_ff", "after_cross_attention")
#: downsample(., r) of Eq. 10
DOWNSAMPLE_MODES = ("avg", "nearest")


def _check(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {value!r}")


@dataclass(frozen=True)
class InflationConfig:
    """How a 2-D SD UNet is inflated into EI²'s video UNet (§4.1).

    Defaults are EI² as in the paper: FFAM self-attention with r = 2 (§4.4; the paper uses r = 2
    or 4), and STAM (Eq. 9): Instance Centering over the frames (Eq. 6), spectral-normalised
    W_v and W_L (Eq. 8), residual.

    - ``attention``: ``"ffam"`` (Eq. 10), ``"sparse_causal"`` (Tune-A-Video: the first and the
      previous frame), ``"full"`` (every token of every frame), ``"frame"`` (plain per-frame
      self-attention, not inflated).
    - ``ffam_ratio``: r of Eq. 10; other frames are downsampled r x r at every layer's own size.
    - ``ffam_downsample``: ``"avg"`` (r x r average pooling) or ``"nearest"`` (keep every r-th
      token in each direction). The paper only says "rescales the input with ratio 1/r²".
    - ``temporal_module``: False removes the temporal module entirely.
    - ``temporal_norm``: ``"instance_centering"`` (STAM, Eq. 6), ``"layer_norm"`` (Tune-A-Video's
      TA module, Eq. 4), ``"layer_norm_no_affine"`` (Fig. 4's LN*), ``"instance_norm"`` (Fig. 4's
      IN, Ulyanov et al.), ``"none"`` (Fig. 4's "w/o norm").
    - ``centering_axis``: what Instance Centering averages over (see
      :func:`fdd.ei2.stam.instance_centering`): ``"frames"`` = Eq. 6, per channel and per
      spatial location; ``"channels"`` = per token over the features (LayerNorm's centring
      without its scaling); ``"frames_channels"`` = over frames and features together, the mean
      the paper attributes to LayerNorm in §4.3.
    - ``spectral_norm``: W̄_v and W̄_L of Eq. 8 (False: Fig. 4's "IC w/o SN").
    - ``identity_init``: ``"gate"`` (default) multiplies the module's output by tanh(g) with g a
      zero-initialised per-channel gate, so inflation changes no frame before tuning while
      W_L stays a non-zero, normalisable matrix (spectral norm of a zero matrix is NaN), and
      |tanh| < 1 keeps the spectral bound of Eq. 7; ``"zero_output"`` zeroes W_L and b as
      Tune-A-Video does (only without spectral norm); ``"none"`` is the paper as written
      (random normalised W_L, b = 0: not the identity at initialisation).
    - ``temporal_position``: ``"after_ff"`` puts the module at the end of the transformer block
      as Tune-A-Video's code does (EI² §5.2 modifies that code); ``"after_cross_attention"``
      between the cross-attention and the feed-forward (SD 1.x blocks only).
    - ``heads``: heads of the temporal attention; 0 uses the block's own head count.
    - ``spectral_subspace``: k of the block power iteration that estimates σ_max for Eq. 8
      (see :func:`fdd.ei2.stam.power_iteration`); 1 = Miyato et al.'s single vector, which lags
      by several percent when the leading singular values are close and the weights move.
    - ``seed``: initialisation of the new weights (the same seed gives the same model).
    """

    attention: str = param("ffam", "Self-attention of every block: ffam = EI²'s fine-coarse frame attention (own "
                                   "frame at full resolution + other frames downsampled by ffam_ratio); "
                                   "sparse_causal = Tune-A-Video (first + previous frame); full = every token of "
                                   "every frame (memory grows with frames²); frame = per-frame, no inflation.",
                           options=ATTENTION_MODES, input_name="spatial_attention")
    ffam_ratio: int = param(2, "r of FFAM (Eq. 10): other frames are downsampled r x r at each layer's own size, so "
                               "a query sees l + (n-1)·l/r² keys. The paper uses 2 or 4; 1 = full resolution.",
                            min=1, max=64)
    ffam_downsample: str = param("avg", "How FFAM downsamples other frames: avg = r x r average pooling; nearest = "
                                        "every r-th token.", options=DOWNSAMPLE_MODES)
    temporal_module: bool = param(True, "Add the temporal module (STAM or its baselines) to every block; off = "
                                        "spatial attention only.")
    temporal_norm: str = param("instance_centering", "Normalisation before the temporal attention: "
                                                     "instance_centering = STAM (Eq. 6, subtract the mean, no "
                                                     "scaling); layer_norm = Tune-A-Video's TA module; "
                                                     "layer_norm_no_affine = LN*; instance_norm = IN; none = no "
                                                     "normalisation (EI² Fig. 4 ablation).", options=TEMPORAL_NORMS)
    centering_axis: str = param("frames", "What instance centering averages over: frames = Eq. 6 (per channel and "
                                          "location, over time: keeps the temporal variance); channels = per token "
                                          "over features (LayerNorm's centring); frames_channels = over both.",
                                options=CENTERING_AXES)
    spectral_norm: bool = param(True, "Spectral-normalise the temporal attention's value and output projections "
                                      "(Eq. 8). Off = 'IC w/o SN' / Tune-A-Video.")
    identity_init: str = param("gate", "How the temporal module starts as the identity: gate = output x tanh(zero-"
                                       "initialised gate) (works with spectral norm); zero_output = zero output "
                                       "projection as Tune-A-Video (spectral_norm must be off); none = the paper as "
                                       "written (not the identity at start).", options=IDENTITY_INITS)
    temporal_position: str = param("after_ff", "Where the temporal module sits: after_ff = end of each transformer "
                                               "block (Tune-A-Video's code); after_cross_attention = before the "
                                               "feed-forward.", options=TEMPORAL_POSITIONS)
    heads: int = 0
    spectral_subspace: int = 8
    seed: int = param(0, "Seed of the new temporal-module weights (same seed, same model).", min=0, max=0xFFFFFFFF,
                      seed=True)

    def validate(self) -> InflationConfig:
        _check("attention", self.attention, ATTENTION_MODES)
        _check("ffam_downsample", self.ffam_downsample, DOWNSAMPLE_MODES)
        _check("temporal_norm", self.temporal_norm, TEMPORAL_NORMS)
        _check("centering_axis", self.centering_axis, CENTERING_AXES)
        _check("identity_init", self.identity_init, IDENTITY_INITS)
        _check("temporal_position", self.temporal_position, TEMPORAL_POSITIONS)
        if int(self.ffam_ratio) < 1:
            raise ValueError(f"ffam_ratio: expected an integer >= 1, got {self.ffam_ratio}")
        if self.spectral_subspace < 1:
            raise ValueError(f"spectral_subspace: expected >= 1, got {self.spectral_subspace}")
        if self.heads < 0:
            raise ValueError(f"heads: expected >= 0 (0 = the block's own), got {self.heads}")
        if self.spectral_norm and self.identity_init == "zero_output":
            raise ValueError("identity_init: 'zero_output' zeroes W_L, and the spectral norm of a zero "
                             "matrix is 0 (W / sigma is NaN); use 'gate' with spectral_norm, or turn "
                             "spectral_norm off")
        return self

    # -- presets ------------------------------------------------------------------------------
    @classmethod
    def ei2(cls, **kw) -> InflationConfig:
        """EI²: FFAM + STAM (the defaults)."""
        return cls(**kw).validate()

    @classmethod
    def tune_a_video(cls, **kw) -> InflationConfig:
        """Tune-A-Video (Wu et al. 2023), EI²'s baseline: sparse-causal attention and a temporal
        attention with LayerNorm, no spectral norm, zero-initialised output projection."""
        base = dict(attention="sparse_causal", temporal_norm="layer_norm", spectral_norm=False,
                    identity_init="zero_output")
        base.update(kw)
        return cls(**base).validate()

    # -- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InflationConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"inflation settings: unknown fields {unknown} (written by a newer version?)")
        return cls(**dict(d)).validate()

    @classmethod
    def from_json(cls, text: str) -> InflationConfig:
        return cls.from_dict(json.loads(text))

    def with_(self, **kw) -> InflationConfig:
        return replace(self, **kw).validate()
