"""One training step per method: ``mocov2``, ``rekd``, ``response``, ``supervised``.

Each method is an ``nn.Module`` whose ``state_dict`` holds everything a
checkpoint needs (encoders, momentum encoders, queues). ``step`` computes the
loss of one batch of two views and returns it with scalar metrics; the loop
owns the optimizers, the backward pass and the schedules.

The ReKD step, after the paper (Zhang et al., AAAI 2022, arXiv 2112.04174):

1. the student (query encoder + momentum key encoder, MoCo-v2) embeds both views;
2. the online teacher, another architecture, does the same and is trained by
   its own MoCo-v2 loss in the same step; its key embeddings go to the
   feature store by dataset index (never blocking);
3. prototype ids of the batch and of every queued key (the queue records each
   key's dataset index) come from the latest clustering held locally;
4. student loss = InfoNCE + weight * relation-wise contrastive loss, where keys
   in the query's prototype are extra positives.

Shape legend: B batch, W workers, D embedding (128), K queue, S image side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from rekd_ray.config import ExperimentConfig, Method, TeacherKind
from rekd_ray.data.augment import EvalTransform
from rekd_ray.data.datasets import ImageData
from rekd_ray.losses.infonce import info_nce_loss
from rekd_ray.losses.relation import positives_per_anchor, relation_contrastive_loss
from rekd_ray.losses.response import response_kd_loss
from rekd_ray.models.backbones import build_backbone
from rekd_ray.models.moco import MoCo
from rekd_ray.training.distributed import SINGLE_PROCESS, Collectives
from rekd_ray.training.relations import RelationSource

__all__ = ["StepOutput", "TrainingMethod", "build_method"]


@dataclass
class StepOutput:
    """The loss to minimize and scalar metrics of one step."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class TrainingMethod(nn.Module):
    """Base class: a method exposes its student backbone and parameter groups."""

    # True when the step reads prototype ids from the relation source: the
    # loop then fills the teacher store and requests clusterings.
    uses_prototypes = False

    def student_backbone(self) -> nn.Module:
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups, one optimizer each (``student``, maybe ``teacher``)."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Momentum updates and other post-optimizer work."""

    def step(
        self, view_1: torch.Tensor, view_2: torch.Tensor, indices: torch.Tensor
    ) -> StepOutput:
        raise NotImplementedError


def _moco(config: ExperimentConfig, which: str) -> MoCo:
    section = config.student if which == "student" else config.teacher
    return MoCo(
        section.backbone,
        projection_dim=section.projection_dim,
        hidden_dim=section.projection_hidden_dim,
        queue_size=config.moco.queue_size,
        momentum=config.moco.momentum,
        image_size=config.data.image_size,
        key_bn_splits=config.moco.key_bn_splits,
    )


def _float(tensor: torch.Tensor) -> torch.Tensor:
    # Losses run in fp32 even when the encoders ran under bf16 autocast.
    return tensor.float()


class MocoV2(TrainingMethod):
    """Instance-wise MoCo-v2: one positive (the other view) per image."""

    def __init__(self, config: ExperimentConfig, collectives: Collectives) -> None:
        super().__init__()
        self.student = _moco(config, "student")
        self.temperature = config.moco.temperature
        self.collectives = collectives

    def student_backbone(self) -> nn.Module:
        return self.student.query_encoder.backbone

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"student": list(self.student.trainable_parameters())}

    def after_step(self) -> None:
        self.student.momentum_update()

    def _student_forward(self, view_1, view_2, indices):
        student_q = _float(self.student.encode_query(view_1))  # (B, D)
        student_k = _float(self.student.encode_key(view_2))  # (B, D)
        # Keys of every worker enter the (identical) queues after the step.
        all_keys = self.collectives.gather(student_k)  # (W*B, D)
        all_indices = self.collectives.gather(indices)  # (W*B,)
        return student_q, student_k, all_keys, all_indices

    def step(self, view_1, view_2, indices) -> StepOutput:
        q, k, all_keys, all_indices = self._student_forward(view_1, view_2, indices)
        queue = self.student.queue.keys.clone().detach()  # (K, D)
        loss = info_nce_loss(q, k, queue, self.temperature)
        self.student.queue.enqueue(all_keys, all_indices)
        return StepOutput(loss, {"loss_student": loss.item()})


class ReKD(MocoV2):
    """MoCo-v2 plus relation knowledge from a heterogeneous teacher."""

    uses_prototypes = True

    def __init__(
        self,
        config: ExperimentConfig,
        collectives: Collectives,
        relation_source: RelationSource,
        data: ImageData,
    ) -> None:
        super().__init__(config, collectives)
        self.relation_source = relation_source
        self.push_every_step = config.relation.store_updates == "step"
        self.clean_view = config.relation.teacher_view == "clean"
        self.cluster_backbone = config.relation.teacher_features == "backbone"
        self.train_images = data.train_images  # (N, H, W) uint8, not a buffer
        self.clean_transform = EvalTransform(
            config.data.image_size, mean=data.mean, std=data.std
        )
        self.relation_weight = config.relation.weight
        self.online_teacher = config.teacher.kind == TeacherKind.online
        # An offline teacher's features already in a shared store (rekd sweep).
        self.features_precomputed = config.teacher.features_store is not None
        self.teacher = _moco(config, "teacher")
        if not self.online_teacher:
            load_offline_teacher(self.teacher, config.teacher.checkpoint)

    def train(self, mode: bool = True) -> ReKD:
        super().train(mode)
        if not self.online_teacher:
            # A frozen teacher keeps its batch-norm statistics as loaded.
            self.teacher.eval()
        return self

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = super().parameter_groups()
        if self.online_teacher:
            groups["teacher"] = list(self.teacher.trainable_parameters())
        return groups

    def after_step(self) -> None:
        super().after_step()
        if self.online_teacher:
            self.teacher.momentum_update()

    @torch.no_grad()
    def _teacher_embedding(self, indices, teacher_k: torch.Tensor | None):
        """What goes to the store: the teacher key encoder's features of the
        clean image (eval mode; backbone features or head embedding), or the
        key of the augmented view."""
        if not self.clean_view and teacher_k is not None:
            return teacher_k
        images = self.clean_transform(self.train_images[indices.cpu()])
        encoder = self.teacher.key_encoder
        network = encoder.backbone if self.cluster_backbone else encoder
        was_training = encoder.training
        encoder.eval()
        features = F.normalize(network(images.to(indices.device)), dim=1)
        encoder.train(was_training)
        return _float(features)  # (B, D_store)

    def _teacher_step(self, view_1, view_2, indices) -> tuple[torch.Tensor, dict]:
        """Online teacher: its own MoCo-v2 loss; its embeddings go to the store."""
        push = self.push_every_step and self.uses_prototypes
        if not self.online_teacher:
            if self.features_precomputed or not push:
                return torch.zeros(()), {}  # the store is filled elsewhere
            teacher_k = None
            if not self.clean_view:
                with torch.no_grad():
                    teacher_k = self.teacher.encode_key(view_2, shuffle_bn=False)
            embedding = self._teacher_embedding(indices, teacher_k)
            self.relation_source.push(indices, _float(embedding))
            return torch.zeros(()), {}
        teacher_q = _float(self.teacher.encode_query(view_1))  # (B, D_t)
        teacher_k = _float(self.teacher.encode_key(view_2))  # (B, D_t)
        queue = self.teacher.queue.keys.clone().detach()  # (K, D_t)
        loss = info_nce_loss(teacher_q, teacher_k, queue, self.temperature)
        self.teacher.queue.enqueue(
            self.collectives.gather(teacher_k), self.collectives.gather(indices)
        )
        if push:
            embedding = self._teacher_embedding(indices, teacher_k)
            self.relation_source.push(indices, embedding)
        return loss, {"loss_teacher": loss.item()}

    def needs_store_pass(self) -> bool:
        """Whether the store must be (re)filled before this epoch's clustering:
        always for an online teacher, once for a frozen one."""
        if self.features_precomputed or not self.uses_prototypes:
            return False
        return self.online_teacher or self.relation_source.version == 0

    @torch.no_grad()
    def fill_store(self, rank: int, world_size: int, batch_size: int = 512) -> None:
        """Embed this worker's share of the training set with the current
        teacher and push it to the store (``relation.store_updates=epoch``).

        Every row of one clustering then comes from one teacher state; rows
        pushed step by step over an epoch mix the feature spaces of a
        teacher that is still moving fast (see ``RelationConfig``).
        Worker ``rank`` takes indices ``rank, rank + world_size, ...``.
        """
        device = next(self.teacher.parameters()).device
        num_samples = self.train_images.shape[0]
        indices = torch.arange(rank, num_samples, world_size, device=device)  # (N/W,)
        for chunk in indices.split(batch_size):
            self.relation_source.push(chunk, self._teacher_embedding(chunk, None))

    def step(self, view_1, view_2, indices) -> StepOutput:
        q, k, all_keys, all_indices = self._student_forward(view_1, view_2, indices)
        teacher_loss, metrics = self._teacher_step(view_1, view_2, indices)

        # Relations come from the prototypes held locally (-1 = not clustered).
        queue = self.student.queue.keys.clone().detach()  # (K, D)
        query_labels = self.relation_source.lookup(indices)  # (B,)
        queue_labels = self.relation_source.lookup(self.student.queue.indices)  # (K,)
        instance = info_nce_loss(q, k, queue, self.temperature)
        relation = relation_contrastive_loss(
            q, k, queue, query_labels, queue_labels, self.temperature
        )
        # Normalized by 1 + weight: with no related keys the student's
        # gradient is exactly MoCo-v2's, at the same learning rate.
        weight = self.relation_weight
        student_loss = (instance + weight * relation) / (1.0 + weight)
        self.student.queue.enqueue(all_keys, all_indices)

        positives = positives_per_anchor(query_labels, queue_labels)
        metrics.update(
            loss_student=student_loss.item(),
            loss_instance=instance.item(),
            loss_relation=relation.item(),
            positives_per_anchor=positives.mean().item(),
            related_fraction=(query_labels >= 0).float().mean().item(),
        )
        return StepOutput(student_loss + teacher_loss, metrics)


class ResponseKD(ReKD):
    """SEED-style baseline: match the teacher's similarity distribution.

    The student's embedding of view 1 is compared with the teacher's queue
    (teacher keys), against the teacher's own distribution, plus InfoNCE.
    Needs equal student and teacher projection dims. The student loss is
    normalized by ``1 + weight`` as in :class:`ReKD`, so that the two methods
    compare at the same step size. A frozen (offline) teacher's queue is
    refreshed every step with its embeddings of view 1, as SEED's queue is.
    """

    uses_prototypes = False

    def __init__(
        self,
        config: ExperimentConfig,
        collectives: Collectives,
        relation_source: RelationSource,
        data: ImageData,
    ) -> None:
        super().__init__(config, collectives, relation_source, data)
        if config.student.projection_dim != config.teacher.projection_dim:
            raise ValueError(
                "method=response compares student and teacher embeddings: "
                f"student.projection_dim ({config.student.projection_dim}) must "
                f"equal teacher.projection_dim ({config.teacher.projection_dim})"
            )
        self.student_temperature = config.relation.student_temperature
        self.teacher_temperature = config.relation.teacher_temperature

    def step(self, view_1, view_2, indices) -> StepOutput:
        q, k, all_keys, all_indices = self._student_forward(view_1, view_2, indices)
        teacher_queue = self.teacher.queue.keys.clone().detach()  # (K, D)
        with torch.no_grad():
            teacher_z = _float(self.teacher.encode_key(view_1, shuffle_bn=False))
        teacher_loss, metrics = self._teacher_step(view_1, view_2, indices)
        queue = self.student.queue.keys.clone().detach()
        instance = info_nce_loss(q, k, queue, self.temperature)
        response = response_kd_loss(
            q,
            teacher_z,
            teacher_queue,
            self.student_temperature,
            self.teacher_temperature,
        )
        weight = self.relation_weight
        student_loss = (instance + weight * response) / (1.0 + weight)
        self.student.queue.enqueue(all_keys, all_indices)
        if not self.online_teacher:
            self.teacher.queue.enqueue(self.collectives.gather(teacher_z), all_indices)
        metrics.update(
            loss_student=student_loss.item(),
            loss_instance=instance.item(),
            loss_response=response.item(),
        )
        return StepOutput(student_loss + teacher_loss, metrics)


class Supervised(TrainingMethod):
    """The same backbone trained with labels on view 1: the upper bound."""

    def __init__(self, config: ExperimentConfig, train_labels: torch.Tensor) -> None:
        super().__init__()
        self.backbone = build_backbone(
            config.student.backbone, image_size=config.data.image_size
        )
        num_classes = int(train_labels.max()) + 1
        self.classifier = nn.Linear(self.backbone.feature_dim, num_classes)
        self.register_buffer("train_labels", train_labels.clone(), persistent=False)

    def student_backbone(self) -> nn.Module:
        return self.backbone

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"student": list(self.parameters())}

    def step(self, view_1, view_2, indices) -> StepOutput:
        logits = _float(self.classifier(self.backbone(view_1)))  # (B, classes)
        labels = self.train_labels[indices]  # (B,)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return StepOutput(
            loss, {"loss_student": loss.item(), "train_top1": accuracy.item()}
        )


def load_offline_teacher(teacher: MoCo, checkpoint_path: str | None) -> None:
    """Load a frozen teacher from a ``rekd train`` checkpoint's student."""
    from rekd_ray.training.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint_path)["method"]
    prefix = "student."
    student_state = {
        key[len(prefix) :]: value
        for key, value in state.items()
        if key.startswith(prefix)
    }
    teacher.load_state_dict(student_state)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)


def build_method(
    config: ExperimentConfig,
    data: ImageData,
    *,
    relation_source: RelationSource | None = None,
    collectives: Collectives = SINGLE_PROCESS,
) -> TrainingMethod:
    """The ``nn.Module`` that computes ``config.method``'s loss for one batch."""
    if config.method == Method.mocov2:
        return MocoV2(config, collectives)
    if config.method == Method.supervised:
        return Supervised(config, data.train_labels)
    if relation_source is None:
        raise ValueError(f"method={config.method.value} needs a relation_source")
    if config.method == Method.rekd:
        return ReKD(config, collectives, relation_source, data)
    return ResponseKD(config, collectives, relation_source, data)
