"""EI² (Zhang et al., "Towards Consistent Video Editing with Text-to-Image Diffusion Models",
NeurIPS 2023): inflate an SD 1.x UNet with STAM (Shift-restricted Temporal Attention, §4.3)
and FFAM (Fine-coarse Frame Attention, §4.4), tune it one-shot on the input video (§5), edit by
DDIM inversion + a new prompt.

Equations and where they live:

- Eq. 2 diffusion loss: :func:`fdd.ei2.tune.diffusion_loss`
- Eq. 3 attention: :func:`fdd.ei2.ffam.attend`, :func:`fdd.ei2.stam.temporal_attention`
- Eq. 4 / 9 residual temporal module: :func:`fdd.ei2.stam.stam_residual`
- Eq. 6 Instance Centering: :func:`fdd.ei2.stam.instance_centering`
- Eq. 8 spectral normalisation: :func:`fdd.ei2.stam.spectral_normalize`
- Eq. 10 FFAM context: :func:`fdd.ei2.ffam.ffam_context`

Baselines behind switches (:class:`InflationConfig`): Tune-A-Video's LayerNorm temporal
attention, LN without affine, InstanceNorm, IC without spectral norm, sparse-causal and full
spatio-temporal attention.
"""

from .config import InflationConfig
from .edit import (
    EditConfig,
    ei2_edit_latents,
    ei2_invert,
    ei2_sample,
    prepare_pixels,
    select_frames,
)
from .ffam import (
    EI2SelfAttnProcessor,
    FrameState,
    attention_matrix_elements,
    expected_ffam_keys,
    ffam_context,
    full_spatiotemporal_attention,
    sparse_causal_context,
)
from .inflate import (
    InflatedUNet,
    base_fingerprint,
    detached_copy,
    inflate_unet,
    is_tuned_name,
    load_tuned_state,
    set_trainable,
    tuned_state_dict,
)
from .pipeline import build_model, ei2_edit, ei2_tune, encode_text, prepare_video
from .plot import render_loss_curve
from .stam import SNLinear, TemporalModule, instance_centering, spectral_normalize
from .tune import (
    MIXED_PRECISION,
    OneShotTuner,
    TuneConfig,
    TunedWeights,
    TuneResult,
    diffusion_loss,
    check_tuned_base,
    read_tuned_weights,
    save_tuned_weights,
    tune_one_shot,
    write_tuned_weights,
)

__all__ = [
    "MIXED_PRECISION",
    "base_fingerprint",
    "EI2SelfAttnProcessor",
    "EditConfig",
    "FrameState",
    "InflatedUNet",
    "InflationConfig",
    "OneShotTuner",
    "SNLinear",
    "TemporalModule",
    "TuneConfig",
    "TuneResult",
    "TunedWeights",
    "attention_matrix_elements",
    "build_model",
    "detached_copy",
    "diffusion_loss",
    "ei2_edit",
    "ei2_edit_latents",
    "ei2_invert",
    "ei2_sample",
    "ei2_tune",
    "encode_text",
    "expected_ffam_keys",
    "ffam_context",
    "full_spatiotemporal_attention",
    "inflate_unet",
    "instance_centering",
    "is_tuned_name",
    "load_tuned_state",
    "prepare_pixels",
    "prepare_video",
    "read_tuned_weights",
    "check_tuned_base",
    "render_loss_curve",
    "save_tuned_weights",
    "select_frames",
    "set_trainable",
    "sparse_causal_context",
    "spectral_normalize",
    "tune_one_shot",
    "tuned_state_dict",
    "write_tuned_weights",
]
