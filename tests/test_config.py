"""Config loading: YAML sections, typed overrides, and errors that name the field."""

from __future__ import annotations

import pytest

from sibeatgan import config as cfg
from sibeatgan.errors import ConfigError


def test_defaults_match_design():
    t = cfg.TeacherConfig()
    assert (t.nz, t.ngf, t.lr, t.beta1, t.beta2, t.batch_size, t.epochs) == (50, 32, 1e-4, 0.5, 0.999, 64, 100)
    p = cfg.PreprocessConfig()
    assert (p.before, p.after, p.fs, p.rpeak_tolerance) == (140, 180, 360, 10)
    assert len(p.records) == 44 and not set(cfg.PACED_RECORDS) & set(p.records)
    assert sorted(cfg.DS1_RECORDS + cfg.DS2_RECORDS) == sorted(cfg.BEATGAN_RECORDS)


def test_yaml_section_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("teacher:\n  epochs: 7\n  lambda_fm: 0.5\npreprocess:\n  leads: [MLII, V1]\n")
    t = cfg.load_config(cfg.TeacherConfig, f, cfg.parse_overrides(["epochs=3", "amp=true"]))
    assert (t.epochs, t.lambda_fm, t.amp) == (3, 0.5, True)
    assert cfg.load_config(cfg.PreprocessConfig, f).leads == ("MLII", "V1")
    # A file with sections but none for this step leaves the defaults.
    assert cfg.load_config(cfg.EvaluateConfig, f) == cfg.EvaluateConfig()


def test_top_level_yaml_and_string_coercions(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("records: '100,101'\nn_folds: 3\n")
    p = cfg.load_config(cfg.PreprocessConfig, f)
    assert p.records == ("100", "101") and p.n_folds == 3
    e = cfg.load_config(cfg.EvaluateConfig, None, {"folds": "0,1,2"})
    assert e.folds == (0, 1, 2)
    t = cfg.load_config(cfg.TeacherConfig, None, {"max_train_beats": "none"})
    assert t.max_train_beats is None
    assert cfg.load_config(cfg.TeacherConfig, None, {"max_train_beats": "500"}).max_train_beats == 500


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"epochs": "ten"}, "TeacherConfig.epochs"),
        ({"epochs": 2.5}, "TeacherConfig.epochs"),
        ({"selection": "best"}, "not one of"),
        ({"amp": "maybe"}, "TeacherConfig.amp"),
        ({"learning_rate": "1"}, "unknown field(s) learning_rate"),
    ],
)
def test_bad_values_name_the_field(overrides, needle):
    with pytest.raises(ConfigError, match=None) as err:
        cfg.load_config(cfg.TeacherConfig, None, overrides)
    assert needle in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.load_config(cfg.TeacherConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        cfg.load_config(cfg.TeacherConfig, bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("preprocess:\n  seed: 1\nteachr:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown section.s. teachr"):
        cfg.load_config(cfg.TeacherConfig, typo)
    notmap = tmp_path / "notmap.yaml"
    notmap.write_text("teacher: 3\n")
    with pytest.raises(ConfigError, match="section teacher must be a mapping"):
        cfg.load_config(cfg.TeacherConfig, notmap)
    with pytest.raises(ConfigError, match="key=value"):
        cfg.parse_overrides(["epochs"])


def test_to_dict_round_trips():
    p = cfg.PreprocessConfig(records=("100", "101"), leads=("MLII", "V1"))
    d = cfg.to_dict(p)
    assert d["records"] == ["100", "101"]
    assert cfg.from_dict(cfg.PreprocessConfig, d) == p
