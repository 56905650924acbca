"""Every node input is checked against its schema before any work: NaN / inf / out-of-range
numbers and unlisted combo values end in an error that names the node and the input."""

from __future__ import annotations

import math

import pytest
import torch


def _inputs(cls):
    info = cls.GET_NODE_INFO_V1()
    return info["name"], {**info["input"].get("required", {}), **info["input"].get("optional", {})}


def test_every_numeric_and_combo_input_refuses_bad_values_by_name(comfy_pack):
    from fdd.testing.fuzz import probes_for
    from fdd_pack.nodes._inputs import check_inputs

    probes = refused = 0
    for node_id, cls in comfy_pack.items():
        _, specs = _inputs(cls)
        for name, spec in specs.items():
            for bad in probes_for(spec):
                probes += 1
                with pytest.raises(ValueError) as err:
                    check_inputs(cls, {name: bad})
                assert node_id in str(err.value) and f"'{name}'" in str(err.value), str(err.value)
                refused += 1
    assert probes == refused and probes > 150, probes


def test_defaults_and_listed_values_pass(comfy_pack):
    from fdd_pack.nodes._inputs import check_inputs

    for node_id, cls in comfy_pack.items():
        _, specs = _inputs(cls)
        for name, spec in specs.items():
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(spec[0], list) and spec[0]:
                check_inputs(cls, {name: spec[0][-1]})
            elif "default" in opts:
                check_inputs(cls, {name: opts["default"]})


def test_a_nan_guidance_scale_stops_the_node_before_any_work(comfy_pack, monkeypatch):
    """Before: cfg = NaN returned all-black frames as a success."""
    import fdd_pack.nodes.plug_and_play as pnp

    called = []
    monkeypatch.setattr(pnp, "plug_and_play_edit", lambda *a, **k: called.append(1))
    frames = torch.rand(4, 32, 32, 3)
    with pytest.raises(ValueError, match=r"FDD_PlugAndPlayVideoEdit: input 'cfg' must be a finite number"):
        comfy_pack["FDD_PlugAndPlayVideoEdit"].execute(backbone=None, edit_adapter=None, frames=frames,
                                                       instruction="x", output_caption="y", cfg=math.nan)
    with pytest.raises(ValueError, match="input 'size' must be one of"):
        comfy_pack["FDD_ToyClip"].execute(size="48")
    assert not called
