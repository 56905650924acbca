"""Integration: every pack node's numeric and combo inputs probed with NaN, +-inf, below-min,
above-max and unlisted values in the real server (``fdd.testing.fuzz``): each probe is refused
or fails with an error naming the input; none succeeds silently; the server keeps serving."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_every_bad_input_ends_in_an_error_that_names_it(server):
    from fdd.testing.fuzz import fuzz

    result = fuzz(server)
    c = result["counts"]
    bad = [r for r in result["rows"] if r["outcome"] not in ("refused", "error")]
    assert not bad, "\n".join(f"{r['outcome']}: {r['workflow']} {r['class_type']}.{r['input']} = {r['value']}: "
                              f"{r['message'][:200]}" for r in bad[:20])
    assert c["silent"] == c["crash"] == c["unclear"] == 0 and result["server_alive"]
    assert result["probes"] > 500 and c["error"] > 50  # NaN reaches the pack's own checks
    # every pack node with a numeric or combo widget in a shipped workflow was probed
    assert {"FDD_PlugAndPlayVideoEdit", "FDD_EVEVideoEdit", "FDD_ASSDOptimize", "FDD_EI2Tune", "FDD_EI2Edit",
            "FDD_Align", "FDD_ToyClip", "FDD_LoraLoader"} <= set(result["node_types_covered"])
