"""``rekd train --resume RUN_ID``: find a run's last checkpoint and its config.

A run's checkpoints live in ``<runtime.storage_path>/<run id>/epoch_<EEEE>``;
new runs record that directory in the MLflow tag ``rekd.run_dir`` (older
runs: their ``runtime.storage_path`` param, resolved from the working
directory). The resumed run uses the checkpoint's config, with ``--set``
overrides applied to it; a config file given on the command line must agree
with it. Only the keys in :data:`RESUME_MAY_CHANGE` may differ.

Every problem is a :class:`ConfigError` (one line; ``rekd`` exits 2): no such
run, a FINISHED run, no loadable checkpoint, a different config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from rekd_ray.config import (
    ConfigError,
    ExperimentConfig,
    build_config,
    flatten_config,
    merge,
    parse_overrides,
)
from rekd_ray.training.checkpoint import find_latest_checkpoint

__all__ = ["RESUME_MAY_CHANGE", "RUN_DIR_TAG", "ResumePoint", "prepare_resume"]

logger = logging.getLogger(__name__)

RUN_DIR_TAG = "rekd.run_dir"
# Key prefixes: where and how fast it runs, never what it computes.
RESUME_MAY_CHANGE = (
    "runtime.torch_threads",
    "runtime.max_failures",
    "runtime.storage_path",
    "runtime.use_gpu",
    "runtime.clustering_",
)


@dataclass(frozen=True)
class ResumePoint:
    run_id: str
    run_dir: Path
    config: ExperimentConfig
    epochs_done: int


def _run_dir(run, run_id: str) -> Path:
    tagged = run.data.tags.get(RUN_DIR_TAG)
    if tagged:
        return Path(tagged)
    storage = run.data.params.get("runtime.storage_path", "rekd_runs")
    return Path(storage).resolve() / run_id


def _check_same(given: ExperimentConfig, saved: ExperimentConfig, run_id: str) -> None:
    given_flat, saved_flat = flatten_config(given), flatten_config(saved)
    for key in sorted(set(given_flat) | set(saved_flat)):
        if key.startswith(RESUME_MAY_CHANGE):
            continue
        if given_flat.get(key) != saved_flat.get(key):
            raise ConfigError(
                f"--resume: {key} is {given_flat.get(key)!r} here but "
                f"{saved_flat.get(key)!r} in run {run_id}; leave out the config "
                "to use the run's own"
            )


def prepare_resume(
    run_id: str,
    tracking_uri: str,
    given: ExperimentConfig | None = None,
    overrides: list[str] | None = None,
) -> ResumePoint:
    """Where ``run_id`` stopped and the config to continue it with.

    Args:
        given: a config the caller built (from a file); must match the run's.
        overrides: ``--set`` pairs applied to the run's config when no
            ``given`` config is passed.

    Raises:
        ConfigError: unknown or FINISHED run, no checkpoint, config mismatch.
    """
    try:
        run = MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException:
        raise ConfigError(
            f"--resume: no run {run_id!r} in {tracking_uri}; pass --tracking-uri"
        ) from None
    if run.info.status == "FINISHED":
        raise ConfigError(f"--resume: run {run_id} is FINISHED; nothing to resume")
    run_dir = _run_dir(run, run_id)
    found = find_latest_checkpoint(run_dir)
    if found is None:
        raise ConfigError(
            f"--resume: run {run_id} has no checkpoint under {run_dir}; it "
            "stopped before its first epoch ended, start it again instead"
        )
    directory, checkpoint = found
    saved = build_config(checkpoint["config"])
    if given is None and overrides:
        given = build_config(merge(checkpoint["config"], parse_overrides(overrides)))
    if given is not None:
        _check_same(given, saved, run_id)
    # Checked above: the given runtime differs only where it may. The run's
    # directory stays where it is, wherever this command runs from.
    runtime = (saved if given is None else given).runtime.model_copy(
        update={"storage_path": str(run_dir.parent)}
    )
    config = saved.model_copy(update={"runtime": runtime})
    logger.info(
        "resuming run %s after epoch %d of %d (%s)",
        run_id,
        checkpoint["epoch"],
        config.optim.epochs,
        directory,
    )
    return ResumePoint(run_id, run_dir, config, int(checkpoint["epoch"]))
