"""Prompts over 75 tokens are encoded in consecutive 77-token chunks, as ComfyUI does, instead of
being cut (issue 24): checked against the tokenizer's own rows, a hand-built chunking, and the
invariance of cross-attention to the tiling that batches conditionings of different lengths."""

from __future__ import annotations

import torch

from fdd.pipelines.common import encode_prompts, prompt_token_chunks, same_length
from fdd.testing.tiny import tiny_text_encoder, write_tiny_tokenizer

torch.set_num_threads(2)


def _tok(tmp_path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(write_tiny_tokenizer(tmp_path / "tok"), local_files_only=True)


def test_chunks_follow_comfyui_rule(tmp_path):
    tok = _tok(tmp_path)
    short = "a red ball"
    assert prompt_token_chunks(tok, short) == [tok(short, padding="max_length", max_length=77,
                                                   truncation=True).input_ids]
    long = "a red ball rolls over green grass " * 6  # character tokenizer: 1 token a character
    body = tok(long).input_ids[1:-1]
    assert len(body) > 150
    rows = prompt_token_chunks(tok, long)
    assert len(rows) == -(-len(body) // 75) and all(len(r) == 77 for r in rows)
    assert [t for r in rows for t in r[1:] if t != 49407] == [t for t in body if t != 49407]
    assert all(r[0] == 49406 and 49407 in r for r in rows)
    assert rows[0][1:76] == body[:75] and rows[1][1:76] == body[75:150]


@torch.no_grad()
def test_a_long_caption_is_not_cut(tmp_path):
    tok, te = _tok(tmp_path), tiny_text_encoder(0)
    long = "a red ball rolls over green grass " * 6
    emb_long = encode_prompts(tok, te, [long])
    cut = tok([long], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    emb_cut = te(cut)[0]  # what the pack did before: the prompt cut at 77 tokens
    assert emb_long.shape == (1, 77 * 3, te.config.hidden_size) and emb_cut.shape[1] == 77
    # the first chunk is the cut prompt's encoding; the rest is new information
    assert torch.allclose(emb_long[:, :77], emb_cut, atol=1e-5)
    assert (emb_long[:, 77:154] - emb_cut).abs().max() > 1e-2
    # short prompts: exactly what the padded tokenizer path gives
    ids = tok(["a red ball"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(encode_prompts(tok, te, ["a red ball"]), te(ids)[0])


@torch.no_grad()
def test_tiling_to_a_common_length_leaves_cross_attention_unchanged(tmp_path):
    tok, te = _tok(tmp_path), tiny_text_encoder(0)
    both = encode_prompts(tok, te, ["a red ball " * 12, ""])  # 2 chunks and 1 chunk
    assert both.shape[1] == 154
    alone = encode_prompts(tok, te, [""])
    assert torch.equal(both[1, :77], alone[0]) and torch.equal(both[1, 77:], alone[0])
    a, b = same_length(torch.randn(1, 77, 8), torch.randn(1, 231, 8))
    assert a.shape[1] == b.shape[1] == 231
    q = torch.randn(1, 5, alone.shape[-1])
    attn = torch.nn.functional.scaled_dot_product_attention
    assert torch.allclose(attn(q, alone, alone), attn(q, both[1:], both[1:]), atol=1e-5)
