"""``rekd bench step``: what ReKD adds to a MoCo-v2 step, per student.

For each student, with the same online teacher (the main job's AlexNet), the
loop (:func:`rekd_ray.training.loop.train`, one epoch in this process) runs
MoCo-v2, then ReKD with the actors behind a
:class:`~rekd_ray.orchestration.ray_relations.RayRelationSource`. The ReKD
store is seeded with random embeddings and clustered before the epoch, so
every timed step mines real relations.

Reported per student: the median step time of each method and their ratio
(the paper reports ~2.2x; target <= 1.6x), and the share of the ReKD step
spent in relation mining and service calls (target <= 10 %):

* service calls and look-ups: the step's ``push``, ``refresh`` and two
  ``lookup`` calls, timed inside the step (:class:`TimedRelationSource`);
* the relation loss: forward + backward of ``relation_contrastive_loss`` and
  ``positives_per_anchor`` on the step's shapes (batch x queue) with the
  run's prototype labels, timed apart from the step (NOTE: timing it inside
  the step would need a hook in ``ReKD.step``).

The rest of the difference is the teacher: its own MoCo-v2 forward and
backward, and a no-grad forward of the clean images for the store.
Step times include fetching the batch (augmentation, ~2-3 % of a step).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from rekd_ray.bench.common import BenchResult, Check, Table, median_seconds
from rekd_ray.bench.workload import (
    MAIN_TEACHER,
    StepClock,
    TimedRelationSource,
    bench_config,
    ray_relation_source,
)
from rekd_ray.config import ExperimentConfig
from rekd_ray.data.datasets import load_dataset
from rekd_ray.losses.relation import positives_per_anchor, relation_contrastive_loss
from rekd_ray.training.loop import train

__all__ = ["run"]

logger = logging.getLogger(__name__)

TARGET_RATIO = 1.6
TARGET_SHARE = 0.10


@dataclass(frozen=True)
class Sizes:
    students: tuple[str, ...]
    batch_size: int
    queue_size: int
    num_prototypes: int
    steps: int
    warmup_steps: int


# The paper's students that are not the teacher, at the main job's batch.
DEFAULT = Sizes(
    ("mobilenet_v3_small", "shufflenet_v2_x1_0", "efficientnet_b0", "resnet18"),
    batch_size=256,
    queue_size=4096,
    num_prototypes=300,
    steps=5,
    warmup_steps=1,
)
QUICK = Sizes(("mobilenet_v3_small",), 64, 256, 16, steps=4, warmup_steps=1)


def run(quick: bool = False) -> BenchResult:
    """MoCo-v2 vs ReKD step time for each student, same teacher."""
    sizes = QUICK if quick else DEFAULT
    rows, checks = [], []
    table = Table(
        f"step: MoCo-v2 vs ReKD, teacher {MAIN_TEACHER} (online), "
        f"batch {sizes.batch_size}",
        [
            "student",
            "MoCo-v2 s/step",
            "ReKD s/step",
            "ratio",
            "mining + service %",
            "ReKD images/s",
        ],
    )
    for student in sizes.students:
        row = _measure_student(student, sizes)
        rows.append(row)
        table.add(
            student,
            row["mocov2_step_seconds"],
            row["rekd_step_seconds"],
            row["ratio"],
            100.0 * row["relation_share"],
            row["rekd_images_per_s"],
        )
        checks.append(
            Check(f"ReKD / MoCo-v2 ({student})", row["ratio"], "<=", TARGET_RATIO)
        )
        checks.append(
            Check(
                f"mining + service share ({student})",
                row["relation_share"],
                "<=",
                TARGET_SHARE,
            )
        )
    return BenchResult(
        name="step",
        quick=quick,
        params={**asdict(sizes), "teacher": MAIN_TEACHER, "teacher_kind": "online"},
        results={"students": rows},
        checks=checks,
        tables=[table],
        notes=[
            "ratio: the rest of ReKD's extra time is the online teacher "
            "(its MoCo-v2 step and a clean-image forward for the store)",
        ],
    )


def _config(method: str, student: str, sizes: Sizes) -> ExperimentConfig:
    return bench_config(
        method=method,
        student=student,
        batch_size=sizes.batch_size,
        steps_per_epoch=sizes.steps,
        epochs=1,
        queue_size=sizes.queue_size,
        num_prototypes=sizes.num_prototypes,
    )


def _measure_student(student: str, sizes: Sizes) -> dict[str, float | str]:
    mocov2 = _config("mocov2", student, sizes)
    data = load_dataset(mocov2.data, seed=mocov2.seed)
    clock = StepClock(sizes.batch_size, sizes.warmup_steps)
    train(mocov2, data, hooks=clock.hooks())
    moco = clock.summary()

    rekd = _config("rekd", student, sizes)
    with ray_relation_source(rekd, data.num_train) as ray_source:
        _seed_prototypes(ray_source, data.num_train, rekd.teacher_store_dim)
        source = TimedRelationSource(ray_source)
        clock = StepClock(sizes.batch_size, sizes.warmup_steps, source.step_seconds)
        result = train(rekd, data, relation_source=source, hooks=clock.hooks())
        relation_loss = _relation_loss_seconds(result.method, ray_source, rekd)
    timed_rekd = clock.summary()

    in_step = timed_rekd["counter_seconds_per_step"]
    share = (in_step + relation_loss) / timed_rekd["step_seconds"]
    row = {
        "student": student,
        "mocov2_step_seconds": moco["step_seconds"],
        "mocov2_images_per_s": moco["images_per_s"],
        "rekd_step_seconds": timed_rekd["step_seconds"],
        "rekd_images_per_s": timed_rekd["images_per_s"],
        "ratio": timed_rekd["step_seconds"] / moco["step_seconds"],
        "service_and_lookup_seconds_per_step": in_step,
        "relation_loss_seconds_per_step": relation_loss,
        "relation_share": share,
        "timed_steps": timed_rekd["timed_steps"],
    }
    logger.info(
        "step %s: MoCo-v2 %.3f s, ReKD %.3f s (x%.2f), mining+service %.1f %%",
        student,
        row["mocov2_step_seconds"],
        row["rekd_step_seconds"],
        row["ratio"],
        100 * share,
    )
    return row


def _seed_prototypes(source, num_samples: int, dim: int) -> None:
    """Random unit embeddings for every sample, clustered once (version 1)."""
    generator = torch.Generator().manual_seed(0)
    embeddings = F.normalize(torch.randn(num_samples, dim, generator=generator))
    source.push(torch.arange(num_samples), embeddings)
    source.request_clustering()
    if not source.refresh(wait=True):
        raise RuntimeError("the clustering service published no prototypes")


def _relation_loss_seconds(method, source, config: ExperimentConfig) -> float:
    """Forward + backward of the relation loss on one step's shapes.

    Shape: query and key (B, D), the method's queue (K, D) and its labels.
    """
    batch, dim = config.optim.batch_size, config.student.projection_dim
    queue = method.student.queue.keys.detach()  # (K, D)
    queue_labels = source.lookup(method.student.queue.indices)  # (K,)
    query_labels = source.lookup(torch.arange(batch))  # (B,)
    generator = torch.Generator().manual_seed(1)

    def loss_step() -> None:
        query = F.normalize(torch.randn(batch, dim, generator=generator))
        query.requires_grad_(True)
        key = F.normalize(torch.randn(batch, dim, generator=generator))
        loss = relation_contrastive_loss(
            query, key, queue, query_labels, queue_labels, config.moco.temperature
        )
        loss.backward()
        positives_per_anchor(query_labels, queue_labels).mean().item()

    loss_step()  # warm-up
    return median_seconds(loss_step, repeats=7)
