"""The settings schema: CLI flags and the dashboard form come from the config dataclass's declarations."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from cpdistiller_core.cli.correct import config_from_args
from cpdistiller_core.cli.correct import register as register_correct
from cpdistiller_core.config import CpDistillerConfig
from cpdistiller_core.errors import CpDistillerError
from cpdistiller_core.runs import RunSpec
from cpdistiller_core.settings import add_arguments, changes_from_args, settings_of


def _correct_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    register_correct(parser.add_subparsers())
    return parser


def test_every_declared_setting_is_a_flag_with_its_default_and_choices_in_the_help():
    parser = argparse.ArgumentParser()
    add_arguments(parser, CpDistillerConfig)
    help_text = " ".join(parser.format_help().split())
    for s in settings_of(CpDistillerConfig):
        assert s.flag in help_text, s.name
        assert f"default {s.default if not isinstance(s.default, bool) else ('on' if s.default else 'off')}" \
            in help_text, s.name
        for choice in s.choices or ():
            assert str(choice) in help_text, (s.name, choice)
        assert s.default == getattr(CpDistillerConfig(), s.name)  # the declaration is the dataclass default


def test_flags_change_only_what_was_given_and_validate_through_the_config():
    args = _correct_parser().parse_args(["correct", "x.csv", "--out", "r", "--epochs", "7", "--sphering", "negcon",
                                         "--no-amp", "--no-pair-gradients", "--lr", "0.01"])
    cfg = config_from_args(args)
    changed = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(CpDistillerConfig(), f.name)}
    assert changed == {"epochs", "sphering", "amp", "pair_gradients", "lr"}
    assert (cfg.epochs, cfg.sphering, cfg.amp, cfg.pair_gradients, cfg.lr) == (7, "negcon", False, False, 0.01)
    assert changes_from_args(_correct_parser().parse_args(["correct", "x.csv", "--out", "r"]), CpDistillerConfig) == {}
    with pytest.raises(SystemExit):  # argparse refuses a value outside the declared choices
        _correct_parser().parse_args(["correct", "x.csv", "--out", "r", "--sphering", "zca"])
    args = _correct_parser().parse_args(["correct", "x.csv", "--out", "r", "--epochs", "0"])
    with pytest.raises(CpDistillerError, match="epochs must be >= 1"):
        config_from_args(args)


def test_the_paper_value_is_stated_for_departures():
    by_name = {s.name: s for s in settings_of(CpDistillerConfig)}
    assert by_name["sphering"].describe_default() == "default none = the paper"
    assert by_name["triplet_controls"].describe_default() == "default auto; the paper: paper"
    assert {s.group for s in settings_of(CpDistillerConfig)} == {"basic", "more", "departure"}


def test_run_spec_round_trips_and_names_bad_settings():
    spec = RunSpec.build({"epochs": 3, "sphering": "negcon"}, "batch,col", {"clip": 20.0}, roles={"plate": "P"})
    assert spec.effects == ("batch", "column") and spec.preprocess.clip == 20.0
    assert RunSpec.from_dict(spec.to_dict()) == spec
    assert RunSpec.build(preprocess=False).preprocess is None
    with pytest.raises(CpDistillerError, match="unknown setting"):
        RunSpec.from_dict({"config": {"epochz": 3}})


def test_preprocessing_flags_come_from_the_same_schema_with_none_and_lists():
    from cpdistiller_core.cli.prep import config_from_args
    from cpdistiller_core.cli.prep import register as register_prep
    from cpdistiller_core.preprocess import PreprocessConfig

    parser = argparse.ArgumentParser()
    register_prep(parser.add_subparsers())
    base = ["preprocess", "x.csv", "out.parquet"]
    assert config_from_args(parser.parse_args(base)) == PreprocessConfig()
    cfg = config_from_args(parser.parse_args([*base, "--normalize", "none", "--clip", "none", "--no-zscore",
                                              "--operations", "variance_threshold,blocklist", "--keep-zero-mad",
                                              "--nan-rows", "zero", "--corr-threshold", "0.8"]))
    assert (cfg.normalize, cfg.clip, cfg.zscore, cfg.drop_zero_mad, cfg.nan_rows, cfg.corr_threshold) == \
        (None, None, False, False, "zero", 0.8)
    assert cfg.operations == ("variance_threshold", "blocklist")
    assert config_from_args(parser.parse_args([*base, "--operations", "none"])).operations == ()
    with pytest.raises(CpDistillerError, match="unknown feature-selection operation"):
        config_from_args(parser.parse_args([*base, "--operations", "pca"]))


def test_extractor_flags_come_from_feature_settings_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys; from cpdistiller_core.cli import build_parser; "
            "a = build_parser().parse_args(['extract', 'm.csv', '--out', 'o', '--illum', 'multiply', "
            "'--preprocess', 'mesmer', '--tile', '64']); "
            "from cpdistiller_core.settings import changes_from_args; "
            "from cpdistiller_core.extractor.settings import FeatureSettings; "
            "print(FeatureSettings(**changes_from_args(a, FeatureSettings)), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "tile=64" in out and "preprocess='mesmer'" in out and "illum='multiply'" in out and "pool=16" in out
    assert out.strip().endswith("False")  # the CLI's flags are built without loading torch


def test_paper_flag_undoes_every_departure_and_flags_still_override(tmp_path):
    # (adversary_encoder has no paper value: it only acts with the controls-trained discriminators)
    departures = [s for s in settings_of(CpDistillerConfig) if s.group == "departure" and s.has_paper_value]
    assert {"sphering", "adversary_wells", "min_steps", "neighbor_space", "triplet_controls"} <= \
        {s.name for s in departures}
    cfg = config_from_args(_correct_parser().parse_args(["correct", "x.csv", "--out", "r", "--paper"]))
    assert all(getattr(cfg, s.name) == s.paper for s in departures)
    assert cfg == CpDistillerConfig.paper()
    # --config is read first, --paper over it, then the flags given
    f = tmp_path / "c.json"
    f.write_text('{"sphering": "negcon", "epochs": 7, "batch_size": 128}')
    args = _correct_parser().parse_args(["correct", "x.csv", "--out", "r", "--config", str(f), "--paper",
                                         "--min-steps", "100"])
    cfg = config_from_args(args)
    # epochs has a paper value (50; ours 100), so --paper sets it; batch_size has none and stays
    assert (cfg.sphering, cfg.epochs, cfg.batch_size, cfg.min_steps) == ("none", 50, 128, 100)
    assert CpDistillerConfig.paper().tied_layout_epochs is None
    assert CpDistillerConfig.paper().tied_effects == "correct"


def test_the_form_names_the_departures_that_are_on_by_default():
    from cpdistiller_core.settings import departures_on_by_default, group_title

    on = departures_on_by_default(CpDistillerConfig)
    # decoder_covariates "auto" is the conditional decoder with the default all-wells adversary;
    # triplet_controls "auto" is then the paper's rule, so it is not listed
    # output "auto" is the corrected input whenever the decoder is told every corrected effect;
    # input_correction "auto" is the controls' additive model of the tied effects (controls on 2+ plates)
    assert [s.name for s in on] == ["decoder_covariates", "neighbor_space", "tied_effects", "tied_layout_epochs",
                                    "input_correction", "output"]
    assert group_title(CpDistillerConfig, "departure").endswith(
        "on by default: Decoder sees, Mine neighbours in, Position tied to treatments, Epochs if positions are tied, "
        "Remove the controls' additive effects, Embedding from")
    assert group_title(CpDistillerConfig, "more") == "More settings (paper defaults)"
