"""A node input that sets a config field has the config's default, so a node and a script using
the engine behave alike. Differences are listed here with their reason; a new one fails."""

from __future__ import annotations

import dataclasses

import pytest

#: node id -> (config class path, {node input: config field} where the names differ)
PAIRS = {
    "FDD_PlugAndPlayVideoEdit": ("fdd.pipelines:PlugAndPlayConfig", {"cfg": "text_cfg"}),
    "FDD_EVEVideoEdit": ("fdd.distill.eve:EVEConfig", {"cfg": "text_cfg"}),
    "FDD_ASSDOptimize": ("fdd.assd:ASSDConfig", {"cfg": "guidance_scale", "image_cfg": "image_guidance_scale"}),
    "FDD_EI2Inflate": ("fdd.ei2:InflationConfig", {}),
    "FDD_EI2Tune": ("fdd.ei2:TuneConfig", {}),
    "FDD_EI2Edit": ("fdd.ei2:EditConfig", {}),
    "FDD_Align": ("fdd.distill.config:FDDConfig", {"learning_rate": "lr", "sds_iterations": "iterations_sds",
                                                   "sds_lambda": "lam"}),
}

#: (node, input) -> why the node's default differs from the library's
KNOWN = {
    ("FDD_EI2Tune", "gradient_checkpointing"): "the node defaults to saving GPU memory; the library to speed",
    ("FDD_EI2Tune", "checkpoint_every"): "the node writes checkpoints only with a run_name; the library never "
                                         "by default",
    ("FDD_EVEVideoEdit", "cfg"): "issue 26: the node samples as the student was trained (1 / 1); EVEConfig "
                                 "still inherits plug-and-play's 7.5 / 1.5",
    ("FDD_EVEVideoEdit", "image_cfg"): "issue 26, as cfg",
}


def _config_defaults(path):
    import importlib

    mod, name = path.split(":")
    cls = getattr(importlib.import_module(mod), name)
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


@pytest.mark.parametrize("node_id", sorted(PAIRS))
def test_node_defaults_equal_the_config_defaults(comfy_pack, node_id):
    path, alias = PAIRS[node_id]
    defaults = _config_defaults(path)
    info = comfy_pack[node_id].GET_NODE_INFO_V1()["input"]
    specs = {**info.get("required", {}), **info.get("optional", {})}
    compared, differ = 0, {}
    for name, spec in specs.items():
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        field = alias.get(name, name)
        if "default" not in opts or field not in defaults:
            continue
        compared += 1
        if opts["default"] != defaults[field]:
            differ[name] = (opts["default"], defaults[field])
    unexplained = {k: v for k, v in differ.items() if (node_id, k) not in KNOWN}
    assert not unexplained, f"{node_id}: node default vs {path} default differ for {unexplained}"
    stale = [k for (n, k) in KNOWN if n == node_id and k not in differ]
    assert not stale, f"{node_id}: {stale} listed as differing but now agree: drop them from KNOWN"
    assert compared >= 4


@pytest.mark.parametrize("node_id", sorted(PAIRS))
def test_config_inputs_are_built_from_the_config_declarations(comfy_pack, node_id):
    """Each input that sets a declared config field (fdd.params.param) takes its tooltip and
    range from the declaration: the text and bounds are written once, on the config field."""
    import importlib

    from fdd.params import declared

    path, _ = PAIRS[node_id]
    mod, name = path.split(":")
    fields = declared(getattr(importlib.import_module(mod), name))
    assert len(fields) >= 4, f"{path} declares {len(fields)} params"
    info = comfy_pack[node_id].GET_NODE_INFO_V1()["input"]
    specs = {**info.get("required", {}), **info.get("optional", {})}
    by_input = {d.input_name: d for d in fields.values()}
    built = 0
    for input_name, spec in specs.items():
        d = by_input.get(input_name)
        if d is None:
            continue
        opts = spec[1]
        assert opts["tooltip"] == d.param.tooltip, (node_id, input_name)
        for key in ("min", "max"):
            if getattr(d.param, key) is not None:
                assert opts[key] == getattr(d.param, key), (node_id, input_name, key)
        if d.param.options is not None:
            assert list(spec[1].get("options", spec[0])) == list(d.param.options), (node_id, input_name)
        built += 1
    assert built >= 4


def test_config_inputs_refuse_undeclared_fields_and_fill_node_defaults(comfy_pack):
    from fdd_pack.nodes._inputs import ConfigInputs

    from fdd.pipelines import PlugAndPlayConfig

    with pytest.raises(TypeError, match=r"\['branch_split'\] are not declared"):
        ConfigInputs(PlugAndPlayConfig, ["steps", "branch_split"])
    with pytest.raises(TypeError, match=r"\['nope'\] are not declared"):
        ConfigInputs(PlugAndPlayConfig, ["steps"], nope=1)
    inputs = ConfigInputs(PlugAndPlayConfig, ["steps", "text_cfg"], text_cfg=1.0)
    cfg = inputs.config({"steps": 3})
    assert (cfg.steps, cfg.text_cfg, cfg.image_cfg) == (3, 1.0, 1.5)  # node default, config default
    assert inputs.config({"cfg": 2.5}).text_cfg == 2.5  # by the node's input name
    with pytest.raises(TypeError, match="not among this node's fields"):
        inputs.inputs("image_cfg")
