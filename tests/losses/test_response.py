"""Tests of the SEED-style response-knowledge KD loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from rekd_ray.losses import ResponseKDLoss, response_kd_loss


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1)


def naive_response(student_z, teacher_z, teacher_queue, t_student, t_teacher):
    """(1/N) sum_i sum_c p_T(c) log(p_T(c) / p_S(c)), c in [t_i; queue]."""

    def softmax(values):
        top = max(values)
        exps = [math.exp(v - top) for v in values]
        return [e / sum(exps) for e in exps]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))

    total = 0.0
    queue = teacher_queue.tolist()
    for s, t in zip(student_z.tolist(), teacher_z.tolist(), strict=True):
        candidates = [t] + queue
        p_teacher = softmax([dot(t, c) / t_teacher for c in candidates])
        p_student = softmax([dot(s, c) / t_student for c in candidates])
        total += sum(
            pt * math.log(pt / ps)
            for pt, ps in zip(p_teacher, p_student, strict=True)
            if pt > 0
        )
    return total / len(student_z)


@pytest.mark.parametrize("n", [1, 2, 8])
@pytest.mark.parametrize("d", [1, 16])
@pytest.mark.parametrize("k", [0, 5])
def test_matches_naive_loop(n, d, k):
    student, teacher, queue = unit(n, d, seed=1), unit(n, d, seed=2), unit(k, d, seed=3)
    loss = response_kd_loss(
        student.double(), teacher.double(), queue.double(), 0.2, 0.1
    )
    expected = naive_response(student, teacher, queue, 0.2, 0.1)
    assert loss.item() == pytest.approx(expected, abs=1e-9)


def test_hand_computed_case():
    # t = (1, 0), queue = [(0, 1)], s = (0, 1), both temperatures 1.
    # p_T = softmax([1, 0]), p_S = softmax([0, 1]): every log ratio is +-1, so
    # KL = p_T[0] - p_T[1] = tanh(1/2) = 0.46211715726000974.
    loss = response_kd_loss(
        torch.tensor([[0.0, 1.0]]),
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[0.0, 1.0]]),
        student_temperature=1.0,
        teacher_temperature=1.0,
    )
    assert loss.item() == pytest.approx(0.46211715726000974, rel=1e-6)


@pytest.mark.parametrize("n", [1, 8])
def test_zero_when_student_equals_teacher(n):
    teacher, queue = unit(n, 16, seed=2), unit(5, 16, seed=3)
    loss = response_kd_loss(teacher.clone(), teacher, queue, 0.2, 0.2)
    assert abs(loss.item()) < 1e-6


@pytest.mark.parametrize("seed", range(4))
def test_non_negative(seed):
    student, teacher = unit(8, 16, seed=seed), unit(8, 16, seed=seed + 10)
    queue = unit(5, 16, seed=seed + 20)
    assert response_kd_loss(student, teacher, queue, 0.2, 0.01).item() >= 0.0


def test_batch_permutation_invariance():
    student, teacher, queue = (
        unit(8, 16, seed=1),
        unit(8, 16, seed=2),
        unit(5, 16, seed=3),
    )
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    loss = response_kd_loss(student, teacher, queue, 0.2, 0.05)
    permuted = response_kd_loss(student[perm], teacher[perm], queue, 0.2, 0.05)
    torch.testing.assert_close(loss, permuted)


def test_no_gradient_reaches_the_teacher_and_large_logits_are_finite():
    student = unit(4, 8, seed=1).requires_grad_()
    teacher = unit(4, 8, seed=2).requires_grad_()
    queue = unit(6, 8, seed=3).requires_grad_()
    loss = response_kd_loss(student, teacher, queue, 1e-3, 1e-4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert teacher.grad is None and queue.grad is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"student_z": torch.ones(4)}, r"student_z must have shape \(N, D\).*\(4,\)"),
        ({"teacher_z": torch.ones(2, 3)}, r"teacher_z .*\(2, 2\), got \(2, 3\)"),
        ({"teacher_queue": torch.ones(5, 3)}, r"teacher_queue .*\(K, 2\).*\(5, 3\)"),
        ({"student_temperature": 0.0}, r"student_temperature must be .*got 0.0"),
        ({"teacher_temperature": -1.0}, r"teacher_temperature must be .*got -1.0"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = {
        "student_z": unit(2, 2),
        "teacher_z": unit(2, 2),
        "teacher_queue": unit(5, 2),
        "student_temperature": 0.2,
        "teacher_temperature": 0.01,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        response_kd_loss(**args)


def test_module_wrapper():
    student, teacher, queue = unit(3, 4, seed=1), unit(3, 4, seed=2), unit(2, 4, seed=3)
    module = ResponseKDLoss(student_temperature=0.3, teacher_temperature=0.1)
    torch.testing.assert_close(
        module(student, teacher, queue),
        response_kd_loss(student, teacher, queue, 0.3, 0.1),
    )


def test_sgd_steps_lower_the_loss():
    torch.manual_seed(0)
    student = torch.randn(8, 16, requires_grad=True)
    teacher, queue = unit(8, 16, seed=2), unit(32, 16, seed=3)
    optimizer = torch.optim.SGD([student], lr=0.5)

    def loss_fn():
        return response_kd_loss(F.normalize(student, dim=1), teacher, queue, 0.2, 0.1)

    first = loss_fn().item()
    for _ in range(10):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
    assert loss_fn().item() < first
