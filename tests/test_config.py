"""Config validation: every bad value names its dotted key and what is allowed."""

import pytest

from rekd_ray.config import (
    ConfigError,
    ExperimentConfig,
    Method,
    flatten_config,
    load_config,
    parse_overrides,
)


def test_defaults_are_valid():
    config = load_config(None)
    assert config.method == Method.rekd
    assert config.uses_teacher


def test_every_experiment_file_is_valid():
    from pathlib import Path

    for path in sorted(Path("experiments").glob("*.yaml")):
        if path.name.startswith("sweep") or path.name == "ablation.yaml":
            continue
        load_config(path)


def test_overrides_parse_yaml_scalars():
    nested = parse_overrides(["optim.lr=0.1", "data.train_subset=null", "name=x"])
    assert nested == {"optim": {"lr": 0.1}, "data": {"train_subset": None}, "name": "x"}


def test_override_applies():
    config = load_config(None, ["student.backbone=resnet18", "optim.epochs=3"])
    assert config.student.backbone == "resnet18"
    assert config.optim.epochs == 3


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("student.backbone=vgg11", r"student\.backbone: unknown backbone 'vgg11'"),
        ("relation.num_prototypes=1", r"relation\.num_prototypes"),
        ("optim.lr=-0.1", r"optim\.lr: .*greater than 0"),
        ("optim.learning_rate=0.1", r"optim\.learning_rate: unknown key"),
        ("moco.queue_size=16", r"moco\.queue_size \(16\) must be at least"),
        ("runtime.precision=fp16", r"runtime\.precision"),
        ("method=simclr", r"method: .*'mocov2'"),
        ("teacher.kind=offline", r"teacher.checkpoint"),
        ("teacher.checkpoint=t.pt", r"teacher\.checkpoint is only read"),
        ("optim.lr=.inf", r"optim\.lr: .*finite"),
        ("runtime.torch_threads=100000", r"runtime\.torch_threads: .*1024"),
        ("seed=-1", r"seed: must be in 0\.\."),
    ],
)
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["teacher.backbone=nope"])
    assert "mobilenet_v3_small" in str(error.value)
    assert "\n" not in str(error.value)


def test_yaml_that_does_not_parse(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim: [1, 2\nname: x\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_set_without_equals():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["optim.lr"])


def test_flatten_round_trips_through_mlflow_params():
    flat = flatten_config(ExperimentConfig())
    assert flat["optim.lr"] == 0.06
    assert flat["method"] == "rekd"
    assert all("." in key or key in ("name", "seed", "method") for key in flat)
