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


def test_configs_are_pydantic_models_built_by_keyword():
    t = cfg.TeacherConfig(fold=1, epochs=3)
    assert isinstance(t, cfg.Section) and (t.fold, t.epochs, t.nz) == (1, 3, 50)
    assert cfg.TeacherConfig(fold=1, epochs=3) == t and cfg.TeacherConfig(fold=2) != t
    # Tuples stay tuples, whether they came as lists (YAML) or comma strings (the command line).
    p = cfg.PreprocessConfig(records=["100", 101], leads="MLII, V1")
    assert p.records == ("100", "101") and p.leads == ("MLII", "V1")
    # A validated copy, the pydantic counterpart of dataclasses.replace.
    u = cfg.replace(t, epochs="5")
    assert u.epochs == 5 and t.epochs == 3 and u.fold == 1
    with pytest.raises(ConfigError, match="TeacherConfig.epochs: expected an integer, got 'x'"):
        cfg.replace(t, epochs="x")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"amp": "true", "cuda_graph": "off"}, {"amp": True, "cuda_graph": False}),
        ({"amp": "False", "cuda_graph": "1"}, {"amp": False, "cuda_graph": True}),
        ({"max_train_beats": "None"}, {"max_train_beats": None}),
        ({"max_train_beats": "null", "lr": "3e-4"}, {"max_train_beats": None, "lr": 3e-4}),
    ],
)
def test_command_line_strings_coerce(overrides, expected):
    t = cfg.load_config(cfg.TeacherConfig, None, overrides)
    assert {k: getattr(t, k) for k in expected} == expected


def test_constructor_errors_are_one_line_config_errors():
    with pytest.raises(ConfigError) as err:
        cfg.TeacherConfig(epochs="x")
    assert str(err.value) == "TeacherConfig.epochs: expected an integer, got 'x'"
    with pytest.raises(ConfigError) as err:
        cfg.TeacherConfig(fold="a", epochs="b", amp="c")
    assert "\n" not in str(err.value) and str(err.value).startswith("TeacherConfig.fold:") and "2 more" in str(err.value)
    with pytest.raises(ConfigError, match=r"PreprocessConfig.records\[1\]: expected a string, got None"):
        cfg.PreprocessConfig(records=["100", None])
    with pytest.raises(ConfigError, match=r"ValidateConfig.expected_counts.N: expected an integer, got 'many'"):
        cfg.ValidateConfig(expected_counts={"N": "many"})


def test_nested_section_from_yaml_and_dotted_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("demo:\n  epochs: 2\n  synth:\n    n_records: 3\n    seed: 5\nsynth:\n  seed: 9\n")
    d = cfg.load_config(cfg.DemoConfig, f, cfg.parse_overrides(["synth.seed=7", "synth.duration_s=60"]))
    assert isinstance(d.synth, cfg.SynthConfig)
    assert (d.epochs, d.synth.n_records, d.synth.seed, d.synth.duration_s) == (2, 3, 7, 60.0)
    assert cfg.load_config(cfg.SynthConfig, f).seed == 9  # the synth step's own section is separate
    # Defaults, a dotted override alone, and a round trip through to_dict (nested as a mapping).
    assert cfg.load_config(cfg.DemoConfig).synth == cfg.SynthConfig()
    assert cfg.load_config(cfg.DemoConfig, None, {"synth.n_records": "2"}).synth.n_records == 2
    assert cfg.to_dict(d)["synth"] == {**cfg.to_dict(cfg.SynthConfig()), "n_records": 3, "seed": 7, "duration_s": 60.0}
    assert cfg.from_dict(cfg.DemoConfig, cfg.to_dict(d)) == d
    assert cfg.replace(d, **{"synth.seed": 1}).synth == cfg.replace(d.synth, seed=1)
    # A mapping field takes dotted overrides too.
    v = cfg.load_config(cfg.ValidateConfig, None, {"expected_counts.N": "100", "expected_counts.V": "7"})
    assert v.expected_counts == {"N": 100, "V": 7}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"synth.seed": "x"}, "DemoConfig.synth.seed: expected an integer, got 'x'"),
        ({"synth.sead": "1"}, "DemoConfig.synth: unknown field(s) sead; known: anomaly_fraction, duration_s, fs, n_records, seed"),
        ({"synth": "3"}, "DemoConfig.synth: expected a mapping, got '3'"),
        ({"synth": 3, "synth.seed": "1"}, "DemoConfig.synth: is 3, not a section; cannot set synth.seed"),
        ({"sinth.seed": "1"}, "DemoConfig: unknown field(s) sinth; known: epochs, synth"),
    ],
)
def test_nested_errors_name_the_full_path(overrides, message):
    with pytest.raises(ConfigError) as err:
        cfg.load_config(cfg.DemoConfig, None, overrides)
    assert str(err.value) == message


def test_override_names_must_be_complete():
    with pytest.raises(ConfigError, match="empty name"):
        cfg.parse_overrides(["synth..seed=1"])
    assert cfg.parse_overrides([" synth.seed = 3 "]) == {"synth.seed": "3"}


def test_every_section_loads_from_a_file_of_sections(tmp_path):
    f = tmp_path / "all.yaml"
    f.write_text("".join(f"{name}: {{}}\n" for name in cfg.SECTIONS))
    for name, cls in cfg.SECTIONS.items():
        assert cfg.load_config(cls, f) == cls() and cfg.SECTIONS_BY_CLASS[cls] == name
