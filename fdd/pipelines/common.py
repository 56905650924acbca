"""Prompts to embeddings (the frame / pixel / latent conversions live in :mod:`fdd.video`, the
out-of-memory helpers in :mod:`fdd.memory`)."""

from __future__ import annotations

import math
from typing import Sequence

import torch



def prompt_token_chunks(tokenizer, prompt: str, max_len: int = 77) -> list[list[int]]:
    """A prompt's token ids as CLIP input rows of ``max_len``, the way ComfyUI's SD 1.x tokenizer
    cuts a plain prompt (``comfy/sd1_clip.py``, ``SDTokenizer.tokenize_with_weights``): its tokens
    in consecutive chunks of ``max_len - 2``, each framed by the start and end tokens and the
    last padded. A prompt that fits gives the one row the tokenizer's own padding gives."""
    ids = list(tokenizer(prompt, truncation=False, verbose=False).input_ids)
    if len(ids) <= max_len:
        return [list(tokenizer(prompt, padding="max_length", max_length=max_len, truncation=True).input_ids)]
    bos, eos = ids[0], ids[-1]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    body, n = ids[1:-1], max_len - 2
    rows = [[bos] + body[i:i + n] + [eos] for i in range(0, len(body), n)]
    return [r + [pad] * (max_len - len(r)) for r in rows]


def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], device=None) -> torch.Tensor:
    """SD 1.x text conditioning ``(len(prompts), L, D)``: each prompt's CLIP rows
    (:func:`prompt_token_chunks`: a prompt over 75 tokens is not cut but encoded in consecutive
    77-token chunks, as ComfyUI does) through the encoder, the last hidden states (after the final
    layer norm) of its chunks concatenated. Prompts of different chunk counts are tiled to their
    least common multiple, as ComfyUI batches such conditionings; repeating every key of a
    cross-attention k times leaves its output unchanged, so a prompt means the same alone."""
    if tokenizer is None:
        raise ValueError("tokenizer: the backbone has no tokenizer; load it with a tokenizer folder "
                         "(outside ComfyUI) or run inside ComfyUI, which provides comfy/sd1_tokenizer")
    device = device or next(text_encoder.parameters()).device
    max_len = getattr(text_encoder.config, "max_position_embeddings", 77)
    rows = [prompt_token_chunks(tokenizer, p, max_len) for p in prompts]
    ids = torch.tensor([r for chunks in rows for r in chunks], dtype=torch.long, device=device)
    vocab = text_encoder.config.vocab_size
    if int(ids.max()) >= vocab:
        raise ValueError(f"tokenizer: produced token id {int(ids.max())} but the text encoder has only "
                         f"{vocab} tokens; the tokenizer does not belong to this model")
    hidden = text_encoder(ids)[0]
    counts = [len(c) for c in rows]
    if set(counts) == {1}:
        return hidden
    return torch.cat(same_length(*[h.reshape(1, -1, h.shape[-1]) for h in hidden.split(counts)]))


def same_length(*embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Text conditionings ``(B, L_i, D)`` tiled along the tokens to the least common multiple of
    their lengths (ComfyUI's rule for batching conditionings of different lengths; unchanged
    attention, see :func:`encode_prompts`), so they can be batched."""
    lengths = [e.shape[1] for e in embeddings]
    if len(set(lengths)) == 1:
        return tuple(embeddings)
    lcm = math.lcm(*lengths)
    return tuple(e.repeat(1, lcm // e.shape[1], 1) for e in embeddings)

