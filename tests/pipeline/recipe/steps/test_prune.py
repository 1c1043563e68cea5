import pytest

from bitladder.errors import BitladderError
from bitladder.pipeline.recipe.compress import run_recipe
from bitladder.pipeline.recipe.parse import parse_recipe
from bitladder.pipeline.recipe.steps.prune import Prune


def test_channel_options_build_the_config_and_stay_with_channels():
    cfg = Prune(method="channels", sparsity=0.4, target="flops", max_group=0.8).config()
    assert (cfg.ratio, cfg.target, cfg.max_group) == (0.4, "flops", 0.8)
    assert Prune(method="channels").config().target == "channels"  # the old keys keep their meaning
    with pytest.raises(BitladderError, match="method: channels only"):
        Prune(method="magnitude", steps=3).check()
    r = parse_recipe("model: digits\nsteps:\n  - prune: {method: channels, target: flops, latency: true, "
                     "round_to: simd}\n")
    cfg = r.steps[0].body.config()
    assert (cfg.latency, cfg.round_to, cfg.to_dict()["version"]) == (True, "simd", 4)
    with pytest.raises(BitladderError, match="round_to must be an integer >= 1 or 'simd'"):
        parse_recipe("model: digits\nsteps:\n  - prune: {method: channels, round_to: 0}\n")


def test_recipe_prunes_to_half_the_flops_in_steps_with_finetuning(digits_spec, tmp_path):
    r = parse_recipe("model: digits\nname: t\nsteps:\n"
                     "  - prune: {method: channels, sparsity: 0.5, target: flops, steps: 2, finetune_epochs: 2}\n"
                     "  - evaluate: {repeats: 1, robustness: false}\n")
    res = run_recipe(r, digits_spec, tmp_path)
    row = res["rungs"][0]
    assert row["macs"] <= 0.52 * row["fp32_macs"] and row["fidelity_drop_pt"] <= 3.0
    assert any("FLOPs" in w and "in 2 step(s)" in w for w in row["warnings"])
