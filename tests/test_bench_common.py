"""``bench/common.py``'s verdict rule shared by the toy-world ablation benches
(:func:`paired_verdict`, :func:`claim_verdict`), checked against an independent computation
(pure Python, ``statistics``) of the rule as written in :data:`VERDICT_RULE`."""

from __future__ import annotations

import math
import os
import random
import statistics
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import common


def _rows(metric, values):
    return [{metric: v} for v in values]


def _reference(first, second, higher_is_better, min_effect):
    """The rule, by hand: paired finite values, d = first - second, m, SE = stdev / sqrt(n)."""
    pairs = [(a, b) for a, b in zip(first, second)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    d = [a - b for a, b in pairs]
    n = len(d)
    if n < 2:
        return {"n": n, "verdict": "not measurable"}
    m = statistics.fmean(d)
    se = statistics.stdev(d) / math.sqrt(n)
    if abs(m) < min_effect or abs(m) <= 2 * se:
        v = "no clear change"
    elif (m > 0) == higher_is_better:
        v = "reproduced"
    else:
        v = "opposite"
    wins = sum((a > b) if higher_is_better else (a < b) for a, b in pairs)
    losses = sum((a < b) if higher_is_better else (a > b) for a, b in pairs)
    k, t = min(wins, losses), wins + losses
    p = 1.0 if t == 0 else min(1.0, 2 * sum(math.comb(t, i) for i in range(k + 1)) / 2 ** t)
    return {"n": n, "delta": m, "se": se, "wins": wins, "losses": losses, "ties": n - wins - losses, "p": p,
            "verdict": v}


def _check(metric, first, second, higher_is_better, min_effect=None):
    got = common.paired_verdict(_rows(metric, first), _rows(metric, second), metric, higher_is_better, min_effect)
    want = _reference(first, second, higher_is_better,
                      common.MIN_EFFECT[metric] if min_effect is None else min_effect)
    assert got["n"] == want["n"] and got["verdict"] == want["verdict"], (got, want)
    if want["n"] >= 2:
        assert math.isclose(got["delta"], want["delta"], rel_tol=1e-9, abs_tol=1e-15)
        assert math.isclose(got["se"], want["se"], rel_tol=1e-9, abs_tol=1e-15)
        for k in ("wins", "losses", "ties"):
            assert got[k] == want[k], k
        assert math.isclose(got["p"], want["p"])
    assert got["higher_is_better"] is bool(higher_is_better)
    assert got["min_effect"] == (common.MIN_EFFECT[metric] if min_effect is None else min_effect)
    return got


def test_reproduced_and_opposite():
    # d = 0.2, 0.25, 0.2, 0.25: m 0.225, SE 0.0144 -> well beyond 2 SE and 0.01
    first, second = [0.5, 0.6, 0.7, 0.8], [0.3, 0.35, 0.5, 0.55]
    r = _check("edit_accuracy", first, second, True)
    assert r["verdict"] == "reproduced" and math.isclose(r["delta"], 0.225)
    assert r["wins"] == 4 and r["losses"] == 0 and math.isclose(r["p"], 0.125)
    assert _check("edit_accuracy", first, second, False)["verdict"] == "opposite"
    # lower is better: the claimed-better variant's path residual is higher on every clip
    assert _check("path_residual_px", [3.0, 3.5, 2.9], [2.5, 2.8, 2.6], False)["verdict"] == "opposite"
    assert _check("path_residual_px", [2.5, 2.8, 2.6], [3.0, 3.5, 2.9], False)["verdict"] == "reproduced"
    # every clip changed by the same nonzero amount: SE 0, a clear change
    r = _check("preservation", [0.5, 0.625, 0.75], [0.25, 0.375, 0.5], True)
    assert r["se"] == 0.0 and r["verdict"] == "reproduced"


def test_below_the_minimum_effect_is_no_clear_change():
    # consistent (SE tiny) but 0.00055 < contamination's 0.001
    first, second = [0.0005, 0.0006, 0.00055], [0.0, 0.0, 0.0]
    r = _check("contamination", first, second, True)
    assert r["verdict"] == "no clear change" and abs(r["delta"]) > 2 * r["se"]
    # the same change with a smaller minimum effect given explicitly is clear
    assert _check("contamination", first, second, True, min_effect=1e-4)["verdict"] == "reproduced"
    # 0.04 px < the path residual's 0.05 px
    assert _check("path_residual_px", [2.0, 3.0, 4.0], [2.04, 3.04, 4.04], False)["verdict"] == "no clear change"


def test_within_two_standard_errors_is_no_clear_change():
    # d = 0, 0.2: m 0.1, SE = sd(0, 0.2) / sqrt 2 = 0.1 -> |m| <= 2 SE
    r = _check("edit_accuracy", [0.0, 0.2], [0.0, 0.0], True)
    assert math.isclose(r["se"], 0.1) and r["verdict"] == "no clear change"
    # big mean, bigger spread: d = 1, -0.5, 1, -0.5, 1 (m 0.4, SE 0.367)
    r = _check("fully_right", [1, 0, 1, 0, 1], [0, 0.5, 0, 0.5, 0], True)
    assert r["verdict"] == "no clear change" and r["wins"] == 3 and r["losses"] == 2


def test_fewer_than_two_clips_is_not_measurable():
    r = _check("edit_accuracy", [0.5], [0.0], True)
    assert r["verdict"] == "not measurable" and r["n"] == 1
    r = common.paired_verdict([], [], "edit_accuracy", True)
    assert r["verdict"] == "not measurable" and r["n"] == 0 and math.isnan(r["delta"]) and math.isnan(r["se"])
    # nothing paired at all (every clip undefined on one side)
    r = _check("path_residual_px", [float("nan"), None], [1.0, 2.0], False)
    assert r["verdict"] == "not measurable" and r["n"] == 0


def test_undefined_values_are_skipped_in_pairs():
    first = [1.0, float("nan"), 0.9, None, 0.8, 0.95]
    second = [0.5, 0.5, float("nan"), 0.5, 0.45, 0.5]
    r = _check("edit_accuracy", first, second, True)
    assert r["n"] == 3 and r["verdict"] == "reproduced"
    assert math.isclose(r["mean_first"], (1.0 + 0.8 + 0.95) / 3) and math.isclose(r["mean_second"], 1.45 / 3)


def test_random_cases_match_the_reference():
    rng = random.Random(0)
    metrics = list(common.MIN_EFFECT)
    seen = set()
    for _ in range(400):
        metric = rng.choice(metrics)
        n = rng.randint(0, 9)
        scale = {"path_residual_px": 1.0, "path_residual_px_median": 1.0}.get(metric, 0.05)
        shift = rng.choice([0.0, 0.5, 1.5, 4.0]) * scale * rng.choice([-1, 1])
        second = [rng.random() for _ in range(n)]
        first = [b + shift + rng.gauss(0, scale) for b in second]
        if n and rng.random() < 0.3:
            first[rng.randrange(n)] = rng.choice([float("nan"), None])
        seen.add(_check(metric, first, second, rng.random() < 0.5)["verdict"])
    assert seen == set(common.VERDICTS)


def test_unknown_metric_needs_a_minimum_effect():
    with pytest.raises(KeyError, match="MIN_EFFECT"):
        common.paired_verdict(_rows("x", [1, 2]), _rows("x", [0, 0]), "x", True)
    # d = 1, 2: m 1.5 > 2 SE (1.0) and > 0.1
    assert common.paired_verdict(_rows("x", [1, 2]), _rows("x", [0, 0]), "x", True, 0.1)["verdict"] == "reproduced"


@pytest.mark.parametrize("verdicts, want", [
    (["reproduced", "no clear change", "not measurable"], "reproduced"),
    (["opposite", "no clear change"], "opposite"),
    (["reproduced", "opposite"], "mixed"),
    (["no clear change", "not measurable"], "no clear change"),
    (["not measurable", "not measurable"], "not measurable"),
    ([], "no clear change"),
])
def test_claim_verdict(verdicts, want):
    assert common.claim_verdict(verdicts) == want


def test_the_rule_text_names_the_table():
    for word in ("2 SE", "reproduced", "opposite", "no clear change", "not measurable", "sign test"):
        assert word in common.VERDICT_RULE
    assert f"{common.MIN_EFFECT['contamination']:g}" in common.VERDICT_RULE
    assert f"{common.MIN_EFFECT['path_residual_px']:g} px" in common.VERDICT_RULE


def test_every_helper_a_bench_script_uses_exists():
    """Each ``common.X`` / ``ablation.X`` a bench script names is defined: a helper removed from
    the shared modules while a bench still calls it (as ``CallCounter`` was, breaking
    ``bench_plug_and_play.py`` and ``bench_assd.py`` until they ran) fails here, not at run time."""
    import ast
    import glob
    import importlib

    shared = {name: importlib.import_module(name) for name in ("common", "ablation")}
    missing = []
    for path in sorted(glob.glob(os.path.join(ROOT, "bench", "*.py"))):
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in shared:
                if not hasattr(shared[node.value.id], node.attr):
                    missing.append(f"{os.path.basename(path)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not missing, missing


def test_call_counter_counts_and_restores():
    class Model:
        def forward(self, x):
            return x + 1

        def decode(self, x):
            return x * 2

    m = Model()
    with common.CallCounter(unet=m, decode=(m, "decode")) as c:
        assert m.forward(1) == 2 and m.forward(2) == 3 and m.decode(3) == 6
    assert c.counts == {"unet": 2, "decode": 1} and all(s >= 0 for s in c.seconds.values())
    assert "forward" not in vars(m) and "decode" not in vars(m) and m.forward(1) == 2
