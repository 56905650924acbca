"""The harness the toy-world ablations plug into (EVE Table 2: ``ablation_eve.py``, ASSD Fig. 4:
``ablation_assd.py``, EI² Fig. 4 / 5: ``ablation_ei2.py``).

An ablation runs its variants on the same held-out clips and keeps one row of scores per clip
and variant (``per_clip``); everything after that is shared and lives here:

- :func:`compare`: one paired comparison of two variants on one metric, decided by the benches'
  one rule (:func:`common.paired_verdict`), as a result row whose two sides are named by the
  ablation's own roles (``ours`` / ``versus``, ``better`` / ``worse``, ...);
- :func:`claim`: a paper claim's verdict over its comparisons (:func:`common.claim_verdict`);
- :func:`write_outputs`: the JSON (strict: NaN -> null), the markdown and the grid, atomically;
- :func:`rescore`: recompute the claims and the markdown of a saved result from its per-clip rows
  (nothing is run), e.g. after the verdict rule changed; every ablation takes ``--rescore``.

Each ablation keeps what is its own: the variants, the claims (the paper's words), how a clip is
scored and how its table reads.
"""

from __future__ import annotations

import json
import os
from typing import Callable

import common


def add_result_args(parser, bench: str) -> None:
    """``--out`` (the result JSON; the markdown and the grid go beside it) and ``--rescore``."""
    parser.add_argument("--out", default=os.path.join(common.RESULTS_DIR, f"{bench}.json"),
                        help="result JSON; <stem>.md and <stem>_grid.png are written beside it")
    parser.add_argument("--rescore", action="store_true",
                        help="recompute the verdicts and the markdown of --out from its saved per-clip rows "
                             "(no model run)")


def set_threads(threads: int | None) -> None:
    """Torch threads: ``threads`` when given, else ``$BENCH_THREADS`` or 2 (:func:`common.setup_threads`)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    else:
        common.setup_threads(2)


def compare(per_clip: dict, metric: str, first: str, second: str, higher_is_better: bool,
            roles: tuple[str, str] = ("first", "second")) -> dict:
    """Is variant ``first`` better than ``second`` on ``metric`` over their paired clips
    (:func:`common.paired_verdict`)? The row names the variants under ``roles`` and their means
    ``mean_<role>``; ``delta`` is first - second, ``clip_wins`` the clips moved the claimed way."""
    v = common.paired_verdict(per_clip[first], per_clip[second], metric, higher_is_better)
    a, b = roles
    return {"metric": metric, "higher_is_better": v["higher_is_better"], a: first, b: second, "n": v["n"],
            f"mean_{a}": v["mean_first"], f"mean_{b}": v["mean_second"], "delta": v["delta"], "se": v["se"],
            "min_effect": v["min_effect"], "clip_wins": v["wins"], "clip_losses": v["losses"],
            "clip_ties": v["ties"], "sign_test_p": v["p"], "verdict": v["verdict"]}


def claim(results: list[dict], **fields) -> dict:
    """A claim's entry: its ``fields`` (id, the paper's words, source...), its comparison rows
    and the verdict over them (:func:`common.claim_verdict`)."""
    return {**fields, "results": results, "verdict": common.claim_verdict([r["verdict"] for r in results])}


def result_paths(out: str) -> tuple[str, str]:
    """The grid PNG and markdown paths beside the result JSON ``out``."""
    stem = os.path.splitext(os.path.abspath(out))[0]
    return f"{stem}_grid.png", f"{stem}.md"


def grid_rows(inputs: list, truths: list, outputs: dict, keys: list[str], clips: int) -> list:
    """Rows of the comparison grid: for each of the first ``clips`` clips, its input, its ground
    truth, then each variant's output in ``keys`` order."""
    rows = []
    for i in range(min(clips, len(inputs))):
        rows += [inputs[i], truths[i]] + [outputs[k][i] for k in keys]
    return rows


def mean_abs_diff(outputs: list, reference: list) -> float:
    """Mean over clips of the mean |output - reference| (pixels): how far a variant moved."""
    import numpy as np

    return float(np.mean([np.abs(a - b).mean() for a, b in zip(outputs, reference)]))


def write_outputs(out: str, doc: dict, markdown: Callable[[dict], str], grid_rows: list | None = None,
                  grid_path: str | None = None) -> tuple[str, str]:
    """Write ``doc`` as strict JSON to ``out``, ``markdown(doc)`` to ``<stem>.md`` and, when
    ``grid_rows`` are given, the frame grid to ``grid_path``; every file atomically. Returns the
    JSON and markdown paths."""
    out = os.path.abspath(out)
    md_path = os.path.splitext(out)[0] + ".md"
    if grid_rows:
        from fdd.toy.heldout import save_strip_grid

        save_strip_grid(grid_path, grid_rows)
    doc = common.json_safe(doc)
    common.write_text_atomic(out, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    common.write_text_atomic(md_path, markdown(doc))
    return out, md_path


def rescore(out: str, bench: str, score: Callable[[dict], list[dict]], markdown: Callable[[dict], str],
            settings: dict | None = None) -> int:
    """Recompute ``doc["claims"] = score(doc)`` of the saved result ``out`` from its per-clip rows
    (no model runs) and rewrite it and its markdown; ``settings`` are merged into the doc's
    (the rule's current text and minimum effects)."""
    path = os.path.abspath(out)
    with open(path) as fh:
        doc = json.load(fh)
    doc["claims"] = score(doc)
    if settings:
        doc["settings"].update(settings)
    doc["rescored"] = (f"claims recomputed from the saved per-clip rows with common.paired_verdict "
                       f"(bench/{bench}.py --rescore; no model re-run)")
    if "markdown" in doc:  # the results that record where their markdown is
        doc["markdown"] = result_paths(path)[1]
    write_outputs(path, doc, markdown)
    for c in doc["claims"]:
        print(f"[{bench}] {c.get('id', c.get('variant'))}: {c['verdict']}")
    print(f"[{bench}] rescored {path}")
    return 0
