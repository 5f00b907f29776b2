"""Typed experiment configuration, loaded from YAML with dotted-key overrides.

One :class:`ExperimentConfig` describes a whole training run. The same object
feeds the training loop, Ray Train, Ray Tune overrides and MLflow params (via
:func:`flatten_config`). Every field is validated when the object is built:
an unknown key or a bad value raises :class:`ConfigError` with a one-line
message naming the dotted key, what is allowed and what was given.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rekd_ray.models.names import BACKBONE_NAMES

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "Method",
    "flatten_config",
    "load_config",
    "parse_overrides",
    "read_yaml_mapping",
    "section_model",
]

SEED_LIMIT = 2**31  # torch, numpy and Ray Tune seeds are 32-bit


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


class Method(StrEnum):
    """Training method. ``rekd`` is the paper's; the others are baselines."""

    mocov2 = "mocov2"
    rekd = "rekd"
    response = "response"
    supervised = "supervised"


class DatasetName(StrEnum):
    fashion_mnist = "fashion_mnist"
    image_folder = "image_folder"
    synthetic = "synthetic"


class _Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )


def _check_backbone(name: str) -> str:
    if name not in BACKBONE_NAMES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONE_NAMES}")
    return name


class DataConfig(_Section):
    """Where the images come from.

    ``fashion_mnist`` reads the IDX files of Debian's ``dataset-fashion-mnist``
    under ``root``; ``image_folder`` reads ``root/train`` and ``root/val`` (or
    ``root/test``) in the ImageNet class-per-folder layout; ``synthetic`` makes
    small class-dependent images in memory (tests and benchmarks only).
    """

    dataset: DatasetName = DatasetName.fashion_mnist
    root: str = "/usr/share/datasets/fashion-mnist"
    image_size: int = Field(32, ge=16, le=512)
    train_subset: int | None = Field(None, ge=2)
    test_subset: int | None = Field(None, ge=1)
    synthetic_train_samples: int = Field(512, ge=2, le=10_000_000)
    synthetic_test_samples: int = Field(256, ge=1, le=10_000_000)
    synthetic_classes: int = Field(4, ge=2, le=100_000)
    loader_workers: int = Field(0, ge=0, le=64)


class BackboneConfig(_Section):
    """A randomly initialized torchvision backbone plus the 128-d MLP head."""

    backbone: str = "mobilenet_v3_small"
    projection_dim: int = Field(128, ge=2, le=16_384)
    projection_hidden_dim: int = Field(512, ge=2, le=16_384)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        return _check_backbone(name)


class TeacherKind(StrEnum):
    online = "online"
    offline = "offline"


class TeacherConfig(BackboneConfig):
    """The teacher: ``online`` trains with its own MoCo-v2 loss in the same
    step; ``offline`` is frozen and loaded from ``checkpoint``."""

    backbone: str = "alexnet"
    kind: TeacherKind = TeacherKind.online
    checkpoint: str | None = None
    # Set by `rekd sweep`: the name of a TeacherFeatureStore actor that already
    # holds this offline teacher's features of every training sample, shared
    # by the sweep's trials; the run then neither embeds nor writes them.
    features_store: str | None = None

    @model_validator(mode="after")
    def _offline_needs_checkpoint(self) -> TeacherConfig:
        if self.kind == TeacherKind.offline and not self.checkpoint:
            raise ValueError(
                "an offline teacher needs teacher.checkpoint=PATH "
                "(a checkpoint.pt written by rekd train)"
            )
        if self.checkpoint and self.kind != TeacherKind.offline:
            raise ValueError(
                "teacher.checkpoint is only read for a frozen teacher; set "
                "teacher.kind=offline to use it, or leave it unset"
            )
        if self.features_store and self.kind != TeacherKind.offline:
            raise ValueError(
                "teacher.features_store holds a frozen teacher's features; it "
                "needs teacher.kind=offline (leave it unset otherwise)"
            )
        return self


class MocoConfig(_Section):
    """MoCo-v2 for the student (and an online teacher).

    ``key_bn_splits``: the shuffled key batch is encoded in this many
    sub-batches, the one-process form of Shuffle-BN (see ``models.moco``).
    """

    queue_size: int = Field(4096, ge=1, le=4_194_304)
    momentum: float = Field(0.99, ge=0.0, le=1.0)
    temperature: float = Field(0.2, gt=0.0)
    key_bn_splits: int = Field(4, ge=1, le=1024)


class RelationConfig(_Section):
    """Relation mining from the teacher's prototypes (``rekd`` and ``response``).

    ``num_prototypes`` is M, the number of k-means clusters of the teacher
    embeddings; ``weight`` is lambda in ``InfoNCE + lambda * relation loss``.
    ``teacher_view``: prototypes of clean-image embeddings are much purer than
    those of random crops (measured on Fashion-MNIST with a random-init
    AlexNet teacher, M = 100: same-prototype pairs sharing a label 0.51 against
    0.23), at the cost of one no-grad teacher forward per batch.
    ``teacher_features``: "backbone" clusters the teacher's pooled features
    (kept more class structure than the head output early in training);
    "embedding" its 128-d head output; "backbone" needs ``teacher_view=clean``.
    ``store_updates``: "epoch" embeds the whole training set with the current
    teacher at the start of every epoch (the first clustering then comes
    before the first step, from the teacher's initial state); "step" pushes
    the teacher's embeddings of each batch during the step, as in long
    schedules. In short schedules the online teacher moves so fast that one
    epoch of step pushes mixes many feature spaces: on the full
    Fashion-MNIST with an online AlexNet teacher (M = 300), step pushes gave
    prototype purity 0.37 (NMI 0.16), one pass of the same teacher 0.61
    (NMI 0.33). Both cost one no-grad teacher forward per image and epoch.
    """

    num_prototypes: int = Field(300, ge=2, le=1_000_000)
    weight: float = Field(1.0, ge=0.0, le=1000.0)
    # What the teacher embeds for the store: the un-augmented image ("clean",
    # one extra no-grad teacher forward) or its augmented key view.
    teacher_view: Literal["clean", "augmented"] = "clean"
    # Which teacher output is clustered: its backbone features (pooled, before
    # the head) or the 128-d projection-head embedding it is trained on.
    teacher_features: Literal["backbone", "embedding"] = "backbone"
    # When the store is written: one pass per epoch, or by each step.
    store_updates: Literal["epoch", "step"] = "epoch"
    kmeans_iterations: int = Field(20, ge=1, le=1000)
    recluster_every_steps: int | None = Field(None, ge=1)
    # Wait at each epoch end for that epoch's clustering (its time, ~1 s at
    # M=300 on 60k): prototypes then change only at epoch boundaries, so a
    # one-worker run, and a resumed one, is reproducible. Mid-epoch
    # re-clusterings (recluster_every_steps) are still picked up as they come.
    sync_clustering: bool = False
    teacher_temperature: float = Field(0.07, gt=0.0)
    student_temperature: float = Field(0.2, gt=0.0)

    @model_validator(mode="after")
    def _backbone_features_need_clean_view(self) -> RelationConfig:
        if self.teacher_features == "backbone" and self.teacher_view != "clean":
            raise ValueError(
                "relation.teacher_features=backbone needs relation.teacher_view="
                "clean (augmented keys exist only as head embeddings); set one"
            )
        if self.store_updates == "epoch" and self.teacher_view != "clean":
            raise ValueError(
                "relation.store_updates=epoch embeds clean images; set "
                "relation.teacher_view=clean or relation.store_updates=step"
            )
        if self.store_updates == "epoch" and self.recluster_every_steps:
            raise ValueError(
                "relation.recluster_every_steps re-clusters what the steps "
                "write; set relation.store_updates=step or leave it unset"
            )
        return self


class OptimConfig(_Section):
    epochs: int = Field(3, ge=1, le=100_000)
    batch_size: int = Field(256, ge=2, le=1_048_576)
    lr: float = Field(0.06, gt=0.0, le=100.0)
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0)
    sgd_momentum: float = Field(0.9, ge=0.0, lt=1.0)
    warmup_epochs: int = Field(0, ge=0)


class EvalConfig(_Section):
    """Monitoring each epoch (kNN on subsets) and the final evaluation."""

    knn_k: int = Field(20, ge=1)
    knn_temperature: float = Field(0.07, gt=0.0)
    monitor_train_samples: int = Field(10000, ge=1)
    monitor_test_samples: int = Field(2000, ge=1)
    linear_train_samples: int | None = Field(None, ge=1)
    linear_epochs: int = Field(100, ge=1, le=100_000)
    baseline_random_init: bool = True


class RuntimeConfig(_Section):
    """Where a run executes.

    ``use_gpu``: null (auto) gives every Train worker a GPU when the Ray
    cluster has one per worker at start, else runs on CPUs; true requires GPUs
    (an autoscaling cluster starts GPU nodes for them); false forces CPUs.
    ``clustering_gpus`` and ``clustering_resources`` are what the cluster-wide
    ClusteringService actor requests when a run creates it (see
    ``ray_cluster.yaml``: ``{rekd_clustering: 1}`` pins it to the GPU node
    type that offers that custom resource); faiss runs on the GPU whenever the
    actor holds one.
    """

    num_workers: int = Field(1, ge=1, le=100_000)
    use_gpu: bool | None = None
    clustering_gpus: float = Field(0.0, ge=0.0)
    clustering_resources: dict[str, float] = Field(default_factory=dict)
    precision: Literal["fp32", "bf16"] = "fp32"
    torch_threads: int | None = Field(None, ge=1, le=1024)
    storage_path: str = Field("rekd_runs", min_length=1)
    # Ray Train restarts the worker group from the last checkpoint this many
    # times after a worker dies (a bad loss or bad data is never retried).
    max_failures: int = Field(3, ge=0, le=1000)

    @field_validator("clustering_resources")
    @classmethod
    def _custom_resources_only(cls, resources: dict[str, float]) -> dict:
        reserved = sorted(set(resources) & {"CPU", "GPU", "memory"})
        if reserved:
            raise ValueError(
                f"takes custom resources only, got {reserved}; use "
                "runtime.clustering_gpus for GPUs"
            )
        negative = sorted(name for name, value in resources.items() if value < 0)
        if negative:
            raise ValueError(f"amounts must be >= 0, got negative {negative}")
        return resources


class ExperimentConfig(_Section):
    """A whole run: method, data, student, teacher, optimization, evaluation.

    The defaults are the main job (experiments/fashion_mnist_rekd.yaml).
    """

    name: str = "rekd"
    seed: int = 0
    method: Method = Method.rekd
    data: DataConfig = DataConfig()
    student: BackboneConfig = BackboneConfig()
    teacher: TeacherConfig = TeacherConfig()
    moco: MocoConfig = MocoConfig()
    relation: RelationConfig = RelationConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @field_validator("seed")
    @classmethod
    def _seed_in_range(cls, seed: int) -> int:
        if not 0 <= seed < SEED_LIMIT:
            raise ValueError(
                f"must be in 0..{SEED_LIMIT - 1} (torch and numpy take 32-bit "
                f"seeds), got {seed}; pick one in that range"
            )
        return seed

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if self.moco.queue_size < self.optim.batch_size:
            raise ValueError(
                f"moco.queue_size ({self.moco.queue_size}) must be at least "
                f"optim.batch_size ({self.optim.batch_size}); raise the queue "
                "or lower the batch"
            )
        if (
            self.method == Method.response
            and self.student.projection_dim != self.teacher.projection_dim
        ):
            raise ValueError(
                f"student.projection_dim ({self.student.projection_dim}) must equal "
                f"teacher.projection_dim ({self.teacher.projection_dim}) for "
                "method=response, which compares their embeddings"
            )
        return self

    @property
    def uses_teacher(self) -> bool:
        return self.method in (Method.rekd, Method.response)

    @property
    def teacher_store_dim(self) -> int:
        """D of the vectors the teacher writes to the feature store."""
        if self.relation.teacher_features == "embedding":
            return self.teacher.projection_dim
        from rekd_ray.models.backbones import backbone_feature_dim

        return backbone_feature_dim(self.teacher.backbone)


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The section class a config field's annotation names; None for a leaf."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _section_keys(loc: tuple) -> list[str]:
    """The keys allowed in the section that holds ``loc`` (a pydantic loc)."""
    model: type[BaseModel] = ExperimentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        section = section_model(field.annotation) if field else None
        if section is None:
            break
        model = section
    return sorted(model.model_fields)


def _format_error(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(_section_keys(first["loc"]))
        return f"{key}: unknown key; allowed here: {allowed}"
    message = first["msg"].removeprefix("Value error, ")
    if not key or message.startswith(f"{key}."):
        return message  # a cross-field check that names its own fields
    given = first.get("input")
    if isinstance(given, dict | list) or first["type"].startswith("value_error"):
        return f"{key}: {message}"
    return f"{key}: {message} (got {given!r})"


def build_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a nested dict into an :class:`ExperimentConfig`.

    Raises:
        ConfigError: one line naming the first offending dotted key.
    """
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_error(error)) from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=0.1", "student.backbone=resnet18"]`` into a nested dict.

    Values are parsed as YAML scalars, so ``0.1`` is a float, ``null`` is None.
    """
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. optim.lr=0.1")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        node = nested
        parts = key.strip().split(".")
        if not all(part.strip() for part in parts):
            raise ConfigError(
                f"--set {pair!r}: the key {key.strip()!r} has an empty part "
                "(two dots, or a dot at an end); write e.g. optim.lr=0.1"
            )
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {part!r} is not a section")
        node[parts[-1]] = parsed
    return nested


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``overrides`` into a copy of ``base``."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml_mapping(
    path: Path, what: str, error: type[ConfigError] = ConfigError
) -> dict[str, Any]:
    """The mapping a YAML file holds (an empty file is ``{}``).

    Args:
        what: the field named in the error (``config``, ``SWEEP``, ``base``).
        error: the ConfigError subclass raised.

    Raises:
        error: the file is missing, a directory, unreadable, not UTF-8, not
            YAML, or not a mapping.
    """
    if path.is_dir():
        raise error(f"{what}: {path} is a directory; give a YAML file in it")
    if not path.is_file():
        raise error(f"{what}: file {str(path)!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as decode:
        raise error(
            f"{what}: {path} is not UTF-8 text (byte {decode.start}); save it as "
            "UTF-8 YAML"
        ) from None
    except OSError as os_error:
        raise error(f"{what}: cannot read {path} ({os_error.strerror})") from None
    except yaml.YAMLError as yaml_error:
        mark = getattr(yaml_error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        message = f"{what}: {path} is not valid YAML{where}; fix the syntax"
        raise error(message) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise error(f"{what}: {path} must hold a mapping of keys to values")
    return loaded


def load_config(
    path: str | Path | None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Read a YAML experiment file, apply ``--set`` overrides, validate.

    Raises:
        ConfigError: the file is missing or not YAML, or a value is invalid.
    """
    raw = {} if path is None else read_yaml_mapping(Path(path), "config")
    return build_config(merge(raw, parse_overrides(overrides or [])))


def flatten_config(config: ExperimentConfig) -> dict[str, Any]:
    """Dotted-key view of the config, e.g. ``{"optim.lr": 0.06, ...}``."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                visit(f"{prefix}.{key}" if prefix else key, value)
        else:
            flat[prefix] = node

    visit("", config.model_dump(mode="json"))
    return flat
