"""The frozen pieces the toy trainers share (tokenizer, text encoder, VAE, backbone UNet), read
from a run folder, and a component's final weights.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .config import SCALING
from .factories import make_unet, make_vae
from .text import encode, load_tokenizer, make_text_encoder


class Toolkit:
    """Frozen pieces the trainers share, read from ``out``: tokenizer, text encoder, VAE, UNet.
    The VAE and UNet live on ``device``; the text encoder stays on the CPU (its embeddings are
    cached, and :meth:`emb` hands them over on ``device``)."""

    def __init__(self, out: str, device: str | torch.device = "cpu"):
        self.out = out
        self.device = torch.device(device)
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def tok(self):
        if not hasattr(self, "_tok"):
            self._tok = load_tokenizer(os.path.join(self.out, "text", "tokenizer"))
        return self._tok

    @property
    def te(self):
        if not hasattr(self, "_te"):
            st = torch.load(os.path.join(self.out, "text", "text_encoder.pt"), weights_only=True)
            te = make_text_encoder(st["vocab_size"], 0)
            te.load_state_dict(st["model"])
            self._te = te.eval().requires_grad_(False)
        return self._te

    def _frozen(self, name: str, factory):
        """The trained component ``name`` (built by ``factory``, final weights loaded, frozen),
        loaded once."""
        attr = f"_{name}"
        if not hasattr(self, attr):
            module = factory(0)
            module.load_state_dict(_final_weights(self.out, name))
            setattr(self, attr, module.to(self.device).eval().requires_grad_(False))
        return getattr(self, attr)

    @property
    def vae(self):
        """The VAE: with the sharpened decoder of :func:`train_vae_decoder` when the run has one
        (its encoder, hence the latent space, is the ``vae`` component's)."""
        if not hasattr(self, "_vae"):
            tuned = os.path.isfile(os.path.join(self.out, "decoder", "final.pt"))
            self._vae = self._frozen("decoder" if tuned else "vae", make_vae)
        return self._vae

    @property
    def unet(self):
        return self._frozen("unet", make_unet)

    def emb(self, prompts) -> torch.Tensor:
        miss = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if miss:
            for p, e in zip(miss, encode(self.tok, self.te, miss)):
                self._cache[p] = e
        return torch.stack([self._cache[p] for p in prompts]).to(self.device)

    @torch.no_grad()
    def encode_images(self, pixels) -> torch.Tensor:
        vae = self.vae
        return vae.encode(pixels.to(vae.device)).latent_dist.mean * SCALING

    @torch.no_grad()
    def decode(self, latents) -> np.ndarray:
        """latents ``[N, 4, h, w]`` -> ``[N, H, W, 3]`` 0..1 numpy."""
        vae = self.vae
        x = vae.decode(latents.to(vae.device) / SCALING).sample
        return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).float().cpu().numpy()


def _final_weights(out: str, name: str) -> dict:
    """The component's trained weights (EMA when it had one)."""
    st = torch.load(os.path.join(out, name, "final.pt"), map_location="cpu", weights_only=True)
    return st
