"""MeanTeacher (EMA copy of the student) and confidence-filtered pseudo_labels (GLCL, METHODS 3.20)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastkit.errors import InputError
from contrastkit.train.mean_teacher import MeanTeacher, pseudo_labels


def _student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _batch(seed: int) -> torch.Tensor:
    return torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- MeanTeacher


def test_teacher_starts_as_a_frozen_eval_copy() -> None:
    student = _student()
    mean_teacher = MeanTeacher(student, decay=0.9)
    teacher = mean_teacher.teacher
    assert teacher is not student and not teacher.training and student.training
    for (name, t), (_, s) in zip(teacher.named_parameters(), student.named_parameters(), strict=True):
        assert torch.equal(t, s) and t.data_ptr() != s.data_ptr(), name
        assert not t.requires_grad and s.requires_grad


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.99])
def test_ema_matches_a_step_by_step_loop(decay: float) -> None:
    student = _student(1)
    mean_teacher = MeanTeacher(student, decay=decay)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    # the loop reference: one flat list of numbers per parameter, updated number by number
    ema = [p.detach().reshape(-1).tolist() for p in student.parameters()]
    for step in range(3):
        loss = student(_batch(step)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mean_teacher.update()
        for values, p in zip(ema, student.parameters(), strict=True):
            current = p.detach().reshape(-1).tolist()
            for i, s in enumerate(current):
                values[i] = decay * values[i] + (1 - decay) * s
        for values, t in zip(ema, mean_teacher.teacher.parameters(), strict=True):
            torch.testing.assert_close(t.detach().reshape(-1), torch.tensor(values), rtol=1e-6, atol=1e-7)
    # the student moved, so with decay > 0 the teacher lags behind it
    lag = sum(
        (t - s).abs().sum()
        for t, s in zip(mean_teacher.teacher.parameters(), student.parameters(), strict=True)
    )
    assert (lag > 0) == (decay > 0)


def test_update_copies_buffers() -> None:
    student = _student(2)
    mean_teacher = MeanTeacher(student, decay=0.99)
    student(_batch(5))  # training mode: BatchNorm running statistics move
    bn_s, bn_t = student[1], mean_teacher.teacher[1]
    assert not torch.equal(bn_s.running_mean, bn_t.running_mean)
    mean_teacher.update()
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(bn_s, name), getattr(bn_t, name)), name


def test_teacher_call_has_no_graph_and_stays_in_eval_mode() -> None:
    student = _student(3)
    mean_teacher = MeanTeacher(student)
    mean_teacher.teacher.train()  # even if someone flips it, the call runs it in eval mode
    x = _batch(6).requires_grad_()
    out = mean_teacher(x)
    assert not out.requires_grad and out.grad_fn is None
    assert not mean_teacher.teacher.training
    # eval mode: BatchNorm uses its running statistics, so the call leaves them unchanged
    before = mean_teacher.teacher[1].running_mean.clone()
    mean_teacher(x)
    assert torch.equal(before, mean_teacher.teacher[1].running_mean)
    torch.testing.assert_close(out, mean_teacher.teacher.eval()(x).detach())


def test_update_builds_no_graph() -> None:
    student = _student(4)
    mean_teacher = MeanTeacher(student, decay=0.5)
    student(_batch(7)).sum().backward()
    mean_teacher.update()
    assert all(p.grad is None and p.grad_fn is None for p in mean_teacher.teacher.parameters())


@pytest.mark.parametrize("decay", [-0.1, 1.5, float("nan"), "0.9", True])
def test_bad_decay_raises(decay) -> None:
    with pytest.raises(InputError, match="MeanTeacher.*decay"):
        MeanTeacher(_student(), decay=decay)


def test_non_module_student_raises() -> None:
    with pytest.raises(InputError, match="student.*nn.Module"):
        MeanTeacher(lambda x: x)


# ---------------------------------------------------------------- pseudo_labels


def test_pseudo_labels_threshold_is_inclusive() -> None:
    # one image, 3 classes, 1 x 4 pixels; the max probabilities are 0.9, 0.89, 0.95 and 0.5
    probs = torch.tensor(
        [[0.9, 0.05, 0.05], [0.01, 0.10, 0.89], [0.02, 0.95, 0.03], [0.5, 0.25, 0.25]], dtype=torch.float64
    ).T.reshape(1, 3, 1, 4)
    assert pseudo_labels(probs, threshold=0.9).tolist() == [[[0, 255, 1, 255]]]
    assert pseudo_labels(probs, threshold=0.5, ignore_index=-1).tolist() == [[[0, 2, 1, 0]]]
    assert pseudo_labels(probs, threshold=0.0).tolist() == [[[0, 2, 1, 0]]]
    assert pseudo_labels(probs, threshold=1.0).tolist() == [[[255, 255, 255, 255]]]


def test_pseudo_labels_match_a_pixel_loop() -> None:
    g = torch.Generator().manual_seed(0)
    probs = (3 * torch.randn(2, 4, 5, 6, generator=g)).softmax(dim=1)
    got = pseudo_labels(probs, threshold=0.7)
    assert got.dtype == torch.long and got.shape == (2, 5, 6)
    for b in range(2):
        for h in range(5):
            for w in range(6):
                column = [float(probs[b, k, h, w]) for k in range(4)]
                best = max(range(4), key=lambda k, c=column: c[k])
                assert int(got[b, h, w]) == (best if column[best] >= 0.7 else 255)
    assert 0 < int((got == 255).sum()) < got.numel()  # the threshold splits this batch


def test_pseudo_labels_accept_bf16() -> None:
    probs = torch.tensor([0.95, 0.05]).reshape(1, 2, 1, 1).bfloat16()
    assert pseudo_labels(probs).tolist() == [[[0]]]


@pytest.mark.parametrize(
    "probs, kwargs, match",
    [
        (torch.randn(2, 3, 4, 4), {}, "softmax"),
        (torch.full((1, 2, 2, 2), 0.5), {"threshold": 1.1}, "threshold"),
        (torch.full((1, 2, 2, 2), 0.5), {"ignore_index": 1}, "ignore_index'=1"),
        (torch.full((1, 2, 2, 2), 0.5), {"ignore_index": 0.5}, "ignore_index"),
        (torch.full((4,), 0.25), {}, "probabilities"),
        (torch.full((1, 2, 2, 2), float("nan")), {}, "NaN"),
        (torch.full((1, 2, 2, 2), 1, dtype=torch.long), {}, "floating"),
    ],
)
def test_pseudo_labels_bad_inputs_raise(probs, kwargs, match) -> None:
    with pytest.raises(InputError, match=match):
        pseudo_labels(probs, **kwargs)
