"""Prompts to embeddings (the frame / pixel / latent conversions live in :mod:`fdd.video`, the
out-of-memory helpers in :mod:`fdd.memory`)."""

from __future__ import annotations

from typing import Sequence

import torch



def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], device=None) -> torch.Tensor:
    """SD 1.x text conditioning: CLIP tokens padded / truncated to the encoder's 77 positions,
    the last hidden state (after the final layer norm) as ``encoder_hidden_states``."""
    if tokenizer is None:
        raise ValueError("tokenizer: the backbone has no tokenizer; load it with a tokenizer folder "
                         "(outside ComfyUI) or run inside ComfyUI, which provides comfy/sd1_tokenizer")
    device = device or next(text_encoder.parameters()).device
    max_len = getattr(text_encoder.config, "max_position_embeddings", 77)
    ids = tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    vocab = text_encoder.config.vocab_size
    if int(ids.max()) >= vocab:
        raise ValueError(f"tokenizer: produced token id {int(ids.max())} but the text encoder has only "
                         f"{vocab} tokens; the tokenizer does not belong to this model")
    return text_encoder(ids)[0]

