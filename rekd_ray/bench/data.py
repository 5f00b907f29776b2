"""``rekd bench data``: can the two-view augmentation feed the training step?

The pretraining loader (:func:`~rekd_ray.data.datasets.pretrain_loader`:
batched kornia two-view augmentation, 28 -> 32 px) runs alone with 0, 1 and 2
DataLoader workers over Fashion-MNIST (synthetic 28x28 images when the
dataset is not installed); images/s over ``batches`` batches after the
first, whose time (worker start-up included) is reported apart.

Against it: what the main job's ReKD step (mobilenet_v3_small student,
online AlexNet teacher, in this process) consumes, in images/s, with the
time of augmenting its batch taken out of the step time.

Target (ours; no product target): with the default ``loader_workers: 0``
the augmentation runs inside the training process, so it must cost <= 10 %
of a step: headroom (augmentation images/s / step images/s) >= 10.

NOTE: each loader runs alone here. In training, loader workers share the
same cores with the step, so on a 2-core machine their isolated images/s
overstate what they add.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from rekd_ray.bench.common import BenchResult, Check, Table, timed
from rekd_ray.bench.workload import StepClock, bench_config
from rekd_ray.config import DataConfig
from rekd_ray.data.augment import TwoViewAugmentation
from rekd_ray.data.datasets import (
    ImageData,
    PretrainDataset,
    load_dataset,
    pretrain_loader,
)
from rekd_ray.training.loop import train

__all__ = ["run"]

logger = logging.getLogger(__name__)

TARGET_HEADROOM = 10.0


@dataclass(frozen=True)
class Sizes:
    batch_size: int
    batches: int
    workers: tuple[int, ...]
    step_steps: int
    warmup_steps: int
    queue_size: int


DEFAULT = Sizes(256, 40, (0, 1, 2), step_steps=6, warmup_steps=1, queue_size=4096)
QUICK = Sizes(64, 8, (0, 1, 2), step_steps=4, warmup_steps=1, queue_size=256)


def run(quick: bool = False) -> BenchResult:
    """Loader images/s at each worker count vs the step's consumption."""
    sizes = QUICK if quick else DEFAULT
    data, source = _images()
    loaders = [_loader_throughput(data, sizes, workers) for workers in sizes.workers]
    in_process = loaders[0]["seconds_per_batch"]
    step = _step_consumption(sizes, augment_seconds=in_process)

    table = Table(
        f"data: two-view augmentation ({source}, batch {sizes.batch_size}) "
        f"vs the ReKD step ({step['images_per_s']:,.0f} images/s)",
        ["loader workers", "images/s", "first batch s", "headroom x"],
    )
    for row in loaders:
        row["headroom"] = row["images_per_s"] / step["images_per_s"]
        row["keeps_up"] = row["headroom"] >= 1.0
        table.add(
            row["workers"], row["images_per_s"], row["first_batch_seconds"],
            row["headroom"],
        )  # fmt: skip
    return BenchResult(
        name="data",
        quick=quick,
        params={**asdict(sizes), "images": source, "image_size": 32},
        results={"loaders": loaders, "step": step},
        checks=[
            Check(
                "augmentation / step images/s, 0 loader workers",
                loaders[0]["headroom"],
                ">=",
                TARGET_HEADROOM,
                "ours: <= 10 % of a step",
            )
        ],
        tables=[table],
        notes=["images/s count images; each yields two 32 px views"],
    )


def _images() -> tuple[ImageData, str]:
    try:
        return load_dataset(DataConfig(test_subset=1)), "Fashion-MNIST"
    except FileNotFoundError:
        config = DataConfig(dataset="synthetic", synthetic_train_samples=20_000)
        return load_dataset(config), "synthetic 28x28"


def _loader_throughput(data: ImageData, sizes: Sizes, workers: int) -> dict:
    count = (sizes.batches + 1) * sizes.batch_size
    augmentation = TwoViewAugmentation(32, mean=data.mean, std=data.std)
    dataset = PretrainDataset(data.train_images[:count], augmentation)
    loader = pretrain_loader(dataset, sizes.batch_size, num_workers=workers, seed=0)
    with timed() as first:
        batches = iter(loader)
        next(batches)
    with timed() as clock:
        seen = sum(len(indices) for _, _, indices in batches)
    del batches  # shuts the workers down
    logger.info(
        "data: %d loader workers, %.0f images/s", workers, seen / clock["seconds"]
    )
    return {
        "workers": workers,
        "images_per_s": seen / clock["seconds"],
        "seconds_per_batch": clock["seconds"] / sizes.batches,
        "first_batch_seconds": first["seconds"],
    }


def _step_consumption(sizes: Sizes, augment_seconds: float) -> dict[str, float]:
    """The main job's ReKD step in this process, without its batch's
    augmentation (``augment_seconds``, measured above)."""
    config = bench_config(
        batch_size=sizes.batch_size,
        steps_per_epoch=sizes.step_steps,
        epochs=1,
        queue_size=sizes.queue_size,
        num_prototypes=16,
    )
    data = load_dataset(config.data, seed=config.seed)
    clock = StepClock(sizes.batch_size, sizes.warmup_steps)
    train(config, data, hooks=clock.hooks())
    summary = clock.summary()
    compute = summary["step_seconds"] - augment_seconds
    return {
        "student": config.student.backbone,
        "teacher": config.teacher.backbone,
        "step_seconds": summary["step_seconds"],
        "augment_seconds": augment_seconds,
        "images_per_s": sizes.batch_size / compute,
    }
