"""fdd.numerics: the one non-finite check of every loop."""

from __future__ import annotations

import math

import pytest
import torch

from fdd.numerics import NonFiniteError, require_finite
from fdd.sampling.control import report


def test_require_finite_passes_finite_and_names_step_and_quantity():
    require_finite(torch.ones(3), "x", 1, 2)
    require_finite(2.5, "loss")
    require_finite(None, "nothing")
    for bad in (torch.tensor([1.0, math.nan]), torch.tensor([math.inf]), float("-inf")):
        with pytest.raises(NonFiniteError, match=r"the loss became non-finite \(NaN or inf\) at step 4/9"):
            require_finite(bad, "the loss", 4, 9)


def test_report_checks_the_latents_before_the_callback():
    seen = []
    report(1, 5, torch.zeros(2), lambda *a: seen.append(a[0]), None)
    with pytest.raises(NonFiniteError, match="at step 2/5"):
        report(2, 5, torch.tensor([math.nan]), lambda *a: seen.append(a[0]), None)
    assert seen == [1]
