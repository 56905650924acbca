"""Evaluation of video edits: the papers' metrics, the models they need, a TGVE-style benchmark.

- :mod:`fdd.metrics.definitions`: each metric as a named function of raw embeddings (CLIP frame
  consistency, CLIP text alignment, PickScore, CLIP_dir / ViCLIP_dir, ViCLIP_out) plus model-free
  structure preservation (SSIM, edge agreement) and temporal flicker
- :mod:`fdd.metrics.clip_models`: CLIP / PickScore from local transformers folders
- :mod:`fdd.metrics.viclip`: ViCLIP (InternVid) architecture, loader and preprocessing
- :mod:`fdd.metrics.evaluate`: one edit measured, embeddings computed once per clip
- :mod:`fdd.metrics.benchmark`: LOVEU-TGVE 2023 / TGVE+ / manifest datasets, method registry,
  runner, JSON + grid + HTML report
- :mod:`fdd.metrics.cli`: ``python -m fdd eval ...``
"""

from .definitions import (
                          clip_frame_consistency,
                          clip_text_alignment,
                          direction_similarity,
                          edge_agreement,
                          pick_score,
                          structure_ssim,
                          temporal_flicker,
                          viclip_output_similarity,
                          x100,
)
from .evaluate import EmbeddingCache, MetricModels, evaluate_edit, load_metric_models

__all__ = [
                          "EmbeddingCache",
                          "MetricModels",
                          "clip_frame_consistency",
                          "clip_text_alignment",
                          "direction_similarity",
                          "edge_agreement",
                          "evaluate_edit",
                          "load_metric_models",
                          "pick_score",
                          "structure_ssim",
                          "temporal_flicker",
                          "viclip_output_similarity",
                          "x100",
]
