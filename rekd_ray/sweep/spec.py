"""The sweep file: a base experiment plus a search space, expanded into trials.

A sweep file (YAML) names a base experiment and what to vary::

    name: sweep_backbones
    base: fashion_mnist_rekd.yaml      # relative to this file, or to the cwd
    set:                               # fixed overrides of the base
      data.train_subset: 20000
    grid:                              # cross product, any dotted config key
      student.backbone: [mobilenet_v3_small, resnet18]
      method: [mocov2, rekd]
      seed: [0, 1, 2]
    variants:                          # optional named settings (ablations)
      - {name: offline, set: {teacher.kind: offline}}
    asha: {grace_period: 1}            # optional early stopping on kNN top-1
    baseline: {method: mocov2}         # compare's reference setting

Trials are ``variants x grid``. A left-out ``grid`` or ``variants`` means one
trial of the base (never an empty sweep); a grid written but empty is an
error. Every trial's config is built and validated here, before anything
(Ray, MLflow) is started, so bad input fails in one line naming the field.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rekd_ray.config import (
    ConfigError,
    ExperimentConfig,
    build_config,
    merge,
    read_yaml_mapping,
    section_model,
)

__all__ = [
    "AshaSpec",
    "Sweep",
    "SweepError",
    "SweepSpec",
    "Trial",
    "check_field",
    "load_sweep",
    "nest",
    "trial_label",
]

logger = logging.getLogger(__name__)

# Keys that tell repeats apart but do not make a new setting.
REPEAT_KEYS = ("seed",)


class SweepError(ConfigError):
    """The sweep file is missing, malformed or names an unknown field."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AshaSpec(_Spec):
    """ASHA early stopping on ``val/knn_top1`` (higher is better), per epoch."""

    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)


class VariantSpec(_Spec):
    name: str = Field(min_length=1)
    set: dict[str, Any] = {}


class SweepSpec(_Spec):
    name: str = Field(min_length=1)
    base: str
    set: dict[str, Any] = {}
    grid: dict[str, list[Any]] | None = None
    variants: list[VariantSpec] | None = None
    asha: AshaSpec | None = None
    max_concurrent: int = Field(1, ge=1)
    baseline: dict[str, Any] | None = None
    # CPUs reserved for each trial's driver (it coordinates the Train workers
    # and runs the final linear probe); the Train workers reserve their own.
    # Tune needs a non-zero request; the default keeps Train's CPUs free.
    trial_cpus: float = Field(0.01, gt=0.0)


@dataclass(frozen=True)
class Trial:
    """One point of the sweep: its label, what it overrides, its config."""

    label: str
    overrides: dict[str, Any]
    config: ExperimentConfig
    variant: str | None = None

    @property
    def setting(self) -> dict[str, Any]:
        """The overrides without repeat keys (seed): what the trial tests."""
        return {k: v for k, v in self.overrides.items() if k not in REPEAT_KEYS}


@dataclass(frozen=True)
class Sweep:
    spec: SweepSpec
    path: Path
    base_raw: dict[str, Any]
    trials: list[Trial] = field(default_factory=list)

    @property
    def fixed_raw(self) -> dict[str, Any]:
        """The base experiment with the sweep's fixed ``set`` applied."""
        return merge(self.base_raw, nest(self.spec.set))

    @property
    def varying_keys(self) -> list[str]:
        keys = ["variant"] if self.spec.variants else []
        return keys + list((self.spec.grid or {}).keys())


def check_field(key: str, where: str) -> None:
    """Raise unless ``key`` (dotted) names a leaf field of the experiment config.

    Raises:
        SweepError: naming ``where.key``, the unknown part and the known ones.
    """
    model: type[BaseModel] = ExperimentConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            section = ".".join(parts[:depth]) or "the experiment"
            raise SweepError(
                f"{where}.{key}: {part!r} is not a field of {section}; use one of "
                f"{', '.join(sorted(fields))}"
            )
        section = section_model(fields[part].annotation)
        last = depth == len(parts) - 1
        if section is not None and last:
            raise SweepError(
                f"{where}.{key}: is a section, not a field; name a field inside "
                f"it, e.g. {key}.{next(iter(section.model_fields))}"
            )
        if section is None and not last:
            raise SweepError(
                f"{where}.{key}: {'.'.join(parts[: depth + 1])} is a field, not a "
                "section; drop what follows it"
            )
        if section is not None:
            model = section


def _parse_spec(raw: dict[str, Any], path: Path) -> SweepSpec:
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            raise SweepError(
                f"{key}: unknown key in the sweep file {path.name}; allowed: "
                f"{', '.join(SweepSpec.model_fields)}"
            ) from None
        raise SweepError(f"{key}: {first['msg']} in {path.name}") from None


def _check_search_space(spec: SweepSpec) -> None:
    if spec.grid is not None and not spec.grid:
        raise SweepError(
            "grid: is empty; list at least one field with values, e.g. "
            "grid: {seed: [0, 1, 2]}, or leave grid out for one trial of the base"
        )
    for key, values in (spec.grid or {}).items():
        check_field(key, "grid")
        if not values:
            raise SweepError(
                f"grid.{key}: has no values; give at least one, e.g. {key}: [...]"
            )
    for key in spec.set:
        check_field(key, "set")
    if spec.variants is not None and not spec.variants:
        raise SweepError("variants: is empty; name at least one or leave it out")
    names = [variant.name for variant in spec.variants or []]
    if len(set(names)) != len(names):
        raise SweepError(f"variants: names must be unique, got {names}")
    for variant in spec.variants or []:
        for key in variant.set:
            check_field(key, f"variants[{variant.name}].set")
    for key, values in (spec.grid or {}).items():
        distinct = {json.dumps(value, sort_keys=True, default=str) for value in values}
        if len(distinct) != len(values):
            raise SweepError(
                f"grid.{key}: a value is listed twice ({values}); list each "
                "once (repeat seeds with grid.seed)"
            )
    choices = {key: list(values) for key, values in (spec.grid or {}).items()}
    choices["variant"] = names
    for key, value in (spec.baseline or {}).items():
        if key not in choices:
            raise SweepError(
                f"baseline.{key}: not varied by this sweep; name one of "
                f"{', '.join(sorted(choices))}"
            )
        if str(value) not in {str(choice) for choice in choices[key]}:
            raise SweepError(
                f"baseline.{key}: {value!r} is not one of the sweep's values "
                f"{choices[key]}"
            )


def _check_asha(spec: SweepSpec, trials: list[Trial]) -> None:
    if spec.asha is None:
        return
    epochs = min(trial.config.optim.epochs for trial in trials)
    if spec.asha.grace_period > epochs:
        raise SweepError(
            f"asha.grace_period: {spec.asha.grace_period} epochs is more than "
            f"the {epochs} a trial runs; set it to at most {epochs}"
        )


def nest(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"optim.lr": 0.1}`` -> ``{"optim": {"lr": 0.1}}``."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        node = nested
        *sections, leaf = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return nested


def trial_label(variant: str | None, point: dict[str, Any]) -> str:
    parts = [variant] if variant else []
    parts += [f"{key.split('.')[-1]}={value}" for key, value in point.items()]
    return ",".join(parts) or "base"


def expand_trials(spec: SweepSpec, base_raw: dict[str, Any]) -> list[Trial]:
    """Every trial's validated config, in grid order.

    Raises:
        SweepError: a trial's config is invalid (the message names the trial).
    """
    fixed = merge(base_raw, nest(spec.set))
    variants = [(v.name, v.set) for v in spec.variants or []] or [(None, {})]
    grid = spec.grid or {}
    trials = []
    for (variant, variant_set), values in itertools.product(
        variants, itertools.product(*grid.values())
    ):
        point = dict(zip(grid.keys(), values, strict=True))
        raw = merge(fixed, nest(variant_set))
        raw = merge(raw, nest(point))
        label = trial_label(variant, point)
        try:
            config = build_config(raw)
        except ConfigError as error:
            raise SweepError(f"trial {label}: {error}") from None
        overrides = ({"variant": variant} if variant else {}) | point
        trials.append(Trial(label, overrides, config, variant))
    return trials


def _resolve_base(spec: SweepSpec, path: Path) -> Path:
    beside = path.parent / spec.base
    return beside if beside.is_file() else Path(spec.base)


def load_sweep(path: str | Path) -> Sweep:
    """Read, validate and expand a sweep file.

    Raises:
        SweepError: one line naming the offending key and the fix.
    """
    path = Path(path)
    spec = _parse_spec(read_yaml_mapping(path, "SWEEP", SweepError), path)
    _check_search_space(spec)
    base_path = _resolve_base(spec, path)
    base_raw = read_yaml_mapping(base_path, "base", SweepError)
    trials = expand_trials(spec, base_raw)
    _check_asha(spec, trials)
    logger.debug("sweep %s: %d trials from %s", spec.name, len(trials), base_path)
    return Sweep(spec=spec, path=path.resolve(), base_raw=base_raw, trials=trials)
