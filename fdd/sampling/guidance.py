"""Guidance rules that combine several noise predictions into one."""

from __future__ import annotations

import torch


def classifier_free_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6):
    eps = eps_uncond + w * (eps_cond - eps_uncond). ``scale`` = 1 returns ``eps_cond``."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def instruct_pix2pix_guidance(eps_uncond: torch.Tensor, eps_image: torch.Tensor, eps_full: torch.Tensor,
                              text_scale: float, image_scale: float) -> torch.Tensor:
    """Two-condition classifier-free guidance of InstructPix2Pix (Brooks et al. 2023, Eq. 3):

        eps = eps(∅, ∅) + s_I * (eps(c_I, ∅) − eps(∅, ∅)) + s_T * (eps(c_I, c_T) − eps(c_I, ∅))

    ``eps_uncond`` has neither the image nor the text condition, ``eps_image`` the image only,
    ``eps_full`` both. In the plug-and-play stack the image condition is the edit adapter
    (ControlNet fed the input frame) and the text condition the instruction + output caption.
    """
    return (eps_uncond + image_scale * (eps_image - eps_uncond)
            + text_scale * (eps_full - eps_image))
