"""ASSD: zero-shot video editing by adaptive sliding score distillation.

Paper: "Adaptive Sliding Score Distillation for Zero-Shot Video Editing" (Zhu, Bao et al.),
Method section. Equation to function:

========  =========================================================================
Eq. 1     :func:`fdd.sampling.add_noise` (both branches, one t and one eps)
Eq. 4-5   :func:`~fdd.assd.gradients.video_dds_gradient`
Eq. 6     :func:`~fdd.assd.gradients.sliding_window_smooth`
Eq. 7     :func:`~fdd.assd.gradients.adaptive_mask`
Eq. 8     :func:`~fdd.assd.gradients.assd_gradient`
Eq. 9     :func:`~fdd.assd.gradients.image_dds_gradient`
Eq. 10    :func:`~fdd.assd.gradients.joint_gradient`
Eq. 11    :func:`~fdd.assd.attention.self_attention`
Eq. 12    :func:`~fdd.assd.attention.reference_attention`
Eq. 13    :func:`~fdd.assd.attention.weighted_attention_fusion`
========  =========================================================================

:class:`ASSDOptimizer` runs the steps, :func:`assd_edit` goes from frames to frames;
:mod:`fdd.assd.models` builds the priors (ModelScope / Zeroscope UNet3D, or SD 1.x +
AnimateDiff) and the SD 1.x image model of the joint guidance.
"""

from .attention import (AttentionFusion, FusionAttnProcessor, reference_attention, self_attention,
                        spatial_self_attention_layers, weighted_attention_fusion)
from .gradients import (MASK_CHANNEL_MODES, SMOOTH_BOUNDARIES, adaptive_mask, assd_gradient, dds_update_scale, image_dds_gradient, joint_gradient,
                        keyframe_indices, sgd_step, sliding_window_smooth, video_dds_gradient)
from .models import (ASSDModels, applied_backbone_loras, ImagePrior, LatentSpaceMismatch, MotionPrior, T2VFolderParts, UNet3DPrior,
                     VideoPrior, check_latent_spaces_agree, load_t2v_folder_parts, motion_models, t2v_models)
from .optimize import (ABLATIONS, ASSDConfig, ASSDOptimizer, assd_edit, decode_latent, encode_source,
                       preview_strip, working_size)

__all__ = [
    "AttentionFusion", "FusionAttnProcessor", "reference_attention", "self_attention",
    "spatial_self_attention_layers", "weighted_attention_fusion", "adaptive_mask", "assd_gradient",
    "dds_update_scale", "image_dds_gradient", "joint_gradient", "keyframe_indices", "sgd_step",
    "sliding_window_smooth", "video_dds_gradient", "ASSDModels", "ImagePrior", "LatentSpaceMismatch",
    "MotionPrior", "T2VFolderParts", "UNet3DPrior", "VideoPrior", "check_latent_spaces_agree",
    "load_t2v_folder_parts", "motion_models", "t2v_models", "ABLATIONS", "ASSDConfig", "ASSDOptimizer",
    "assd_edit", "decode_latent", "encode_source", "preview_strip", "working_size", "MASK_CHANNEL_MODES",
    "SMOOTH_BOUNDARIES", "applied_backbone_loras",
]
