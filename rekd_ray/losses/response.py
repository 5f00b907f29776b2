"""Response-knowledge distillation baseline (SEED, arXiv 2101.04731).

Shape legend: N batch, D embedding, K queue. Every embedding arrives
L2-normalized from the caller; nothing here renormalizes. Student and teacher
embeddings must share D (the student head projects into the teacher's space).

The teacher's similarity distribution over ``[own teacher embedding; teacher
queue]`` is the target of the student's distribution over the same
candidates. This is the "response knowledge" that ReKD's relation knowledge
is compared against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rekd_ray.losses.infonce import check_temperature

__all__ = ["ResponseKDLoss", "response_kd_loss"]


def _check_inputs(
    student_z: torch.Tensor, teacher_z: torch.Tensor, teacher_queue: torch.Tensor
) -> None:
    if student_z.dim() != 2 or student_z.shape[0] == 0:
        raise ValueError(
            f"student_z must have shape (N, D) with N > 0, got {tuple(student_z.shape)}"
        )
    n, d = student_z.shape
    if teacher_z.shape != student_z.shape:
        raise ValueError(
            f"teacher_z must have the shape of student_z ({n}, {d}), "
            f"got {tuple(teacher_z.shape)}"
        )
    if teacher_queue.dim() != 2 or teacher_queue.shape[1] != d:
        raise ValueError(
            f"teacher_queue must have shape (K, {d}) to match D={d}, "
            f"got {tuple(teacher_queue.shape)}"
        )


def response_kd_loss(
    student_z: torch.Tensor,
    teacher_z: torch.Tensor,
    teacher_queue: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> torch.Tensor:
    """KL divergence from the teacher's to the student's similarity distribution.

    For sample ``i`` the candidates are ``c_i = [t_i; u_1..u_K]`` (its teacher
    embedding, then the teacher queue). With ``p_T = softmax(t_i . c_i / tau_T)``
    (no gradient) and ``p_S = softmax(s_i . c_i / tau_S)``, the loss is
    ``L = (1/N) sum_i KL(p_T || p_S) = (1/N) sum_i [H(p_T, p_S) - H(p_T)]``
    (SEED, arXiv 2101.04731). NOTE: SEED writes the soft cross-entropy
    ``H(p_T, p_S)``; we return the KL, which differs by the teacher entropy, a
    constant for the student: same gradients, but 0 when the distributions
    match, which makes the logged value readable.

    Args:
        student_z: L2-normalized student embeddings. Shape: (N, D).
        teacher_z: L2-normalized teacher embeddings of the same samples.
            Shape: (N, D).
        teacher_queue: L2-normalized teacher embeddings of earlier batches.
            Shape: (K, D), K may be 0.
        student_temperature: tau_S > 0.
        teacher_temperature: tau_T > 0 (SEED uses a sharper one than tau_S).

    Returns:
        Scalar loss >= 0, mean over the N samples.

    Raises:
        ValueError: On mismatched shapes or a non-positive temperature.
    """
    _check_inputs(student_z, teacher_z, teacher_queue)
    check_temperature("student_temperature", student_temperature)
    check_temperature("teacher_temperature", teacher_temperature)

    # The teacher is a fixed target: no gradient flows into it.
    teacher_z = teacher_z.detach()
    teacher_queue = teacher_queue.detach()

    teacher_sim = torch.cat(
        [
            (teacher_z * teacher_z).sum(dim=1, keepdim=True),  # (N, 1)
            torch.einsum("nd,kd->nk", teacher_z, teacher_queue),  # (N, K)
        ],
        dim=1,
    )  # (N, 1 + K)
    student_sim = torch.cat(
        [
            (student_z * teacher_z).sum(dim=1, keepdim=True),  # (N, 1)
            torch.einsum("nd,kd->nk", student_z, teacher_queue),  # (N, K)
        ],
        dim=1,
    )  # (N, 1 + K)

    teacher_log_p = F.log_softmax(teacher_sim / teacher_temperature, dim=1)
    student_log_p = F.log_softmax(student_sim / student_temperature, dim=1)
    # "batchmean": sum over candidates, mean over samples, i.e. the true KL.
    return F.kl_div(
        student_log_p, teacher_log_p, reduction="batchmean", log_target=True
    )


class ResponseKDLoss(nn.Module):
    """Module wrapper of :func:`response_kd_loss` holding both temperatures."""

    def __init__(
        self, student_temperature: float = 0.2, teacher_temperature: float = 0.01
    ) -> None:
        super().__init__()
        check_temperature("student_temperature", student_temperature)
        check_temperature("teacher_temperature", teacher_temperature)
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature

    def forward(
        self,
        student_z: torch.Tensor,
        teacher_z: torch.Tensor,
        teacher_queue: torch.Tensor,
    ) -> torch.Tensor:
        return response_kd_loss(
            student_z,
            teacher_z,
            teacher_queue,
            self.student_temperature,
            self.teacher_temperature,
        )

    def extra_repr(self) -> str:
        return (
            f"student_temperature={self.student_temperature}, "
            f"teacher_temperature={self.teacher_temperature}"
        )
