"""LogitScale: the clamped, learnable scale the loss modules share."""

import math

import pytest
import torch

from contrastkit import InputError
from contrastkit.losses import LogitScale, mark_no_weight_decay


def test_forward_is_exp_of_the_clamped_parameter_and_differentiable():
    scale = LogitScale(10.0, max_scale=50.0)
    s = scale()
    assert float(s.detach()) == pytest.approx(10.0) and scale.value == pytest.approx(10.0)
    s.backward()
    assert float(scale.log_scale.grad) == pytest.approx(10.0)  # d exp(t)/dt = exp(t)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert float(scale().detach()) == pytest.approx(50.0)
    assert float(scale.log_scale.detach()) == pytest.approx(math.log(50.0))


def test_fixed_scale_is_a_buffer_in_the_state_dict():
    scale = LogitScale(5.0, learnable=False)
    assert list(scale.parameters()) == [] and "log_scale" in scale.state_dict()


@pytest.mark.parametrize(
    "init, low, high", [(0.5, 1.0, 100.0), (200.0, 1.0, 100.0), (5.0, 0.0, 100.0), (5.0, 10.0, 1.0)]
)
def test_bad_configuration_raises(init, low, high):
    with pytest.raises(InputError, match="LogitScale"):
        LogitScale(init, max_scale=high, min_scale=low)


def test_mark_no_weight_decay():
    p = mark_no_weight_decay(torch.nn.Parameter(torch.zeros(1)))
    assert p.no_weight_decay is True
    assert LogitScale(10.0).log_scale.no_weight_decay is True
    assert "scale=10" in repr(LogitScale(10.0))


def test_value_reports_the_clamped_scale_between_step_and_forward():
    scale = LogitScale(10.0, max_scale=100.0)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)  # as an optimiser step might leave it
    assert scale.value == pytest.approx(100.0)
