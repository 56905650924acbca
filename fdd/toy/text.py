"""The toy world's text side: its vocabulary, a word-level CLIP BPE tokenizer, the frozen random
text encoder and its whitening (see :mod:`fdd.toy.train` for why).
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter

import numpy as np
import torch

from .world import BACKGROUNDS, COLOURS, SHAPES, TASKS, make_edit, random_scene
from .config import CROSS, TEXT_POSITIONS


def toy_vocabulary() -> list[str]:
    """Every word a toy caption or instruction can contain."""
    words = {"a", "an", "on", "and", "background", "empty", "striped", "outlined", "make", "the", "turn",
             "into", "change", "to", "remove", "add", "give", "stripes", "draw", "as", "outline", "invert",
             "colours"}
    words |= set(SHAPES) | set(COLOURS) | set(BACKGROUNDS)
    return sorted(words)


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE on the word list (each word once) until every word is a single symbol."""
    seqs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for s in seqs.values():
            for a, b in itertools.pairwise(s):
                pairs[(a, b)] += 1
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out


def write_word_tokenizer(folder: str | os.PathLike) -> str:
    """Write the word-level CLIP tokenizer folder; every toy word is one token (checked)."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    words = toy_vocabulary()
    merges = _learn_merges(words)
    vocab = {w + "</w>": i for i, w in enumerate(words)}
    # the BPE model needs every symbol a merge starts from or produces in its vocabulary
    chars = sorted({c for w in words for c in w} | {c + "</w>" for w in words for c in w})
    for sym in chars + [x for a, b in merges for x in (a, b, a + b)]:
        vocab.setdefault(sym, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as fh:
        json.dump(vocab, fh)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as fh:
        json.dump(special, fh)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as fh:
        json.dump({"model_max_length": TEXT_POSITIONS, "tokenizer_class": "CLIPTokenizer", **special}, fh)
    tok = load_tokenizer(folder)
    for w in words:
        ids = tok(w).input_ids
        if len(ids) != 3 or ids[1] != vocab[w + "</w>"]:
            raise RuntimeError(f"word tokenizer: {w!r} is not a single token ({ids})")
    return folder


def load_tokenizer(folder):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(os.fspath(folder), local_files_only=True)


def make_text_encoder(vocab_size: int, seed: int, token_std: float = 0.2):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=CROSS, intermediate_size=4 * CROSS,
                         num_hidden_layers=2, num_attention_heads=1, max_position_embeddings=TEXT_POSITIONS,
                         hidden_act="quick_gelu", projection_dim=CROSS, bos_token_id=vocab_size - 2,
                         eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    te = CLIPTextModel(cfg).eval()
    with torch.no_grad():
        te.get_input_embeddings().weight.normal_(0.0, token_std)
    return te.requires_grad_(False)


def text_corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """Captions (sources and edit targets), instructions and the empty prompt."""
    rng = np.random.default_rng(seed)
    out = {""}
    for i in range(n):
        e = make_edit(random_scene(rng), TASKS[i % len(TASKS)], rng)
        out |= {e.source_caption, e.target_caption, e.instruction}
    return sorted(out)


@torch.no_grad()
def encode(tok, te, prompts) -> torch.Tensor:
    ids = tok(list(prompts), padding="max_length", max_length=te.config.max_position_embeddings,
              truncation=True, return_tensors="pt").input_ids
    return te(ids)[0]


def embedding_stats(tok, te, prompts) -> dict:
    e = encode(tok, te, prompts).flatten(1)
    e = e / e.norm(dim=1, keepdim=True)
    cos = e @ e.T
    off = cos[~torch.eye(len(e), dtype=torch.bool)]
    return {"max_cos": float(off.max()), "mean_cos": float(off.mean()), "n": len(e)}


@torch.no_grad()
def whiten_text_encoder(tok, te, prompts) -> dict:
    """Bake per-channel whitening of the output into ``final_layer_norm`` (see module doc)."""
    before = embedding_stats(tok, te, prompts)
    h = encode(tok, te, prompts).reshape(-1, te.config.hidden_size)
    m, s = h.mean(0), h.std(0).clamp_min(1e-6)
    ln = te.text_model.final_layer_norm if hasattr(te, "text_model") else te.final_layer_norm
    ln.weight.div_(s)
    ln.bias.sub_(m).div_(s)
    return {"before": before, "after": embedding_stats(tok, te, prompts)}
