"""Offline teachers' features, computed once per sweep and shared by trials.

A frozen (offline) teacher embeds the clean images the same way in every
epoch and in every trial that uses it, so a sweep computes those features
once per *teacher group* (same teacher checkpoint and architecture, same
clustered features, same data and seed: the seed orders the samples) into a
:class:`TeacherFeatureStore`, and the group's trials read it through
``teacher.features_store`` instead of embedding every batch again.

Time saved (logged on the parent run as ``teacher/seconds_saved``) is an
estimate: every trial would have spent one measured embedding pass per epoch
it ran, minus what the shared pass cost (data loading and model build
included). Online teachers change every step and are never shared.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import ray

from rekd_ray.config import ExperimentConfig, TeacherKind
from rekd_ray.orchestration.clustering_service import RAY_NAMESPACE
from rekd_ray.orchestration.feature_store import TeacherFeatureStore

__all__ = ["SharedTeachers", "teacher_group"]

logger = logging.getLogger(__name__)

_WRITE_ROWS = 4096


def teacher_group(config: ExperimentConfig) -> str | None:
    """A key shared by the configs whose teacher features are identical."""
    if not (
        config.uses_teacher
        and config.teacher.kind == TeacherKind.offline
        and config.relation.teacher_view == "clean"
    ):
        return None
    identity = {
        "teacher": config.teacher.model_dump(mode="json", exclude={"features_store"}),
        "features": config.relation.teacher_features,
        "data": config.data.model_dump(mode="json"),
        "seed": config.seed,
    }
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@ray.remote(num_cpus=1)
def _embed_into_store(config_json: dict, store) -> dict[str, float]:
    """Embed every training image with the frozen teacher, write to ``store``."""
    import torch

    from rekd_ray.config import build_config
    from rekd_ray.data.datasets import load_dataset
    from rekd_ray.training.methods import build_method

    start = time.perf_counter()
    # Ray gives a 1-CPU task one thread; this pass runs before any trial.
    torch.set_num_threads(os.cpu_count() or 1)
    config = build_config(config_json)
    data = load_dataset(config.data, seed=config.seed)
    # The method's own embedding code, so shared features equal per-step ones.
    method = build_method(config, data, relation_source=_NoRelations())
    embed_start = time.perf_counter()
    writes = []
    with torch.no_grad():
        for first in range(0, data.num_train, _WRITE_ROWS):
            indices = torch.arange(first, min(first + _WRITE_ROWS, data.num_train))
            rows = method._teacher_embedding(indices, None)
            writes.append(store.write.remote(indices.numpy(), rows.numpy()))
    ray.get(writes)
    end = time.perf_counter()
    return {"embed_seconds": end - embed_start, "total_seconds": end - start}


class _NoRelations:
    """Stands in for a relation source: the shared pass pushes nothing."""

    version = 0


class SharedTeachers:
    """Context manager: one filled feature store per offline-teacher group.

    Args:
        sweep: the expanded sweep.
        parent_run_id: names the stores, so concurrent sweeps never collide.
    """

    def __init__(self, sweep, parent_run_id: str) -> None:
        self.parent_run_id = parent_run_id
        self._configs: dict[str, ExperimentConfig] = {}
        for trial in sweep.trials:
            group = teacher_group(trial.config)
            if group is not None:
                self._configs.setdefault(group, trial.config)
        self._stores: dict[str, ray.actor.ActorHandle] = {}
        self.timings: dict[str, dict[str, float]] = {}

    def store_name(self, group: str) -> str:
        return f"rekd-teacher-features-{self.parent_run_id[:8]}-{group}"

    def names(self) -> dict[str, str]:
        """``{group: store actor name}`` for the trials to look up."""
        return {group: self.store_name(group) for group in self._stores}

    def __enter__(self) -> SharedTeachers:
        for group, config in self._configs.items():
            from rekd_ray.data.datasets import dataset_size

            store = TeacherFeatureStore.options(
                name=self.store_name(group), namespace=RAY_NAMESPACE
            ).remote(group, dataset_size(config.data), config.teacher_store_dim)
            self._stores[group] = store
            self.timings[group] = ray.get(
                _embed_into_store.remote(config.model_dump(mode="json"), store)
            )
            logger.info(
                "offline teacher %s (group %s): features of every sample in "
                "%.1fs, shared by the sweep's trials",
                config.teacher.backbone,
                group,
                self.timings[group]["total_seconds"],
            )
        return self

    def __exit__(self, *exc) -> None:
        for store in self._stores.values():
            ray.kill(store)
        self._stores.clear()

    def seconds_saved(self, children) -> float:
        """Estimated teacher time the trials did not spend (see module doc)."""
        if not self.timings:
            return 0.0
        groups = {self.store_name(group): group for group in self.timings}
        saved = 0.0
        for child in children:
            group = groups.get(child.params.get("teacher.features_store", ""))
            if group is None:
                continue
            last_epoch = child.metrics.get("epoch")
            epochs_run = 0 if last_epoch is None else int(last_epoch) + 1
            saved += epochs_run * self.timings[group]["embed_seconds"]
        return saved - sum(t["total_seconds"] for t in self.timings.values())
