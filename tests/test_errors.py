"""The argument checks: what passes, and the message of what does not."""

import math

import pytest
import torch

from contrastkit.errors import (
    ContrastkitError,
    InputError,
    NoPositivePairsError,
    check_choice,
    check_embeddings,
    check_labels,
    check_mask,
    check_range,
    check_scalar,
    check_scale,
    check_temperature,
)


def test_error_hierarchy_lets_users_catch_value_error():
    assert issubclass(InputError, ValueError) and issubclass(InputError, ContrastkitError)
    assert issubclass(NoPositivePairsError, InputError)


def test_scalar_keeps_the_autograd_graph_of_a_tensor():
    t = torch.tensor([2.0], requires_grad=True)
    out = check_scalar("f", "s", t)
    assert out.shape == () and out.requires_grad
    assert check_scalar("f", "s", 3) == 3.0 and isinstance(check_scalar("f", "s", 3), float)


@pytest.mark.parametrize("bad", [True, "1", None, torch.tensor([1, 2]), torch.tensor(1)])
def test_scalar_rejects_non_numbers(bad):
    with pytest.raises(InputError, match="f: argument 's'"):
        check_scalar("f", "s", bad)


def test_scale_message_explains_temperature():
    with pytest.raises(InputError, match=r"got -1.0\. It is a multiplicative logit scale"):
        check_scale("f", "scale", -1.0)
    assert check_scale("f", "scale", 0.0) == 0.0


def test_temperature_and_range():
    with pytest.raises(InputError, match="finite float > 0; got inf"):
        check_temperature("f", "t", math.inf)
    assert check_range("f", "p", 1.0, 0.0, 1.0) == 1.0
    with pytest.raises(InputError, match=r"in \[0.0, 1.0\); got 1.0"):
        check_range("f", "p", 1.0, 0.0, 1.0, high_open=True)


def test_choice_lists_the_options():
    with pytest.raises(InputError, match="one of 'a', 'b'; got 'c'"):
        check_choice("f", "mode", "c", ("a", "b"))


def test_mask_and_labels():
    with pytest.raises(InputError, match="bool tensor; got dtype torch.int64"):
        check_mask("f", "m", torch.ones(2, 2, dtype=torch.long), (2, 2))
    with pytest.raises(InputError, match=r"shape \(2, 3\); got \(2, 2\)"):
        check_mask("f", "m", torch.ones(2, 2, dtype=torch.bool), (2, 3))
    with pytest.raises(InputError, match=r"shape \(3,\); got \(2,\)"):
        check_labels("f", "labels", torch.arange(2), 3)
    with pytest.raises(InputError, match="integer tensor"):
        check_labels("f", "labels", torch.ones(3, dtype=torch.bool), 3)


def test_embeddings_report_shape_and_bad_count():
    with pytest.raises(InputError, match=r"shape \(B, D\); got a 1-D tensor of shape \(3,\)"):
        check_embeddings("f", "x", torch.ones(3))
    bad = torch.ones(2, 3)
    bad[0, 0] = float("nan")
    bad[1, 2] = float("inf")
    with pytest.raises(InputError, match="2 NaN/inf value"):
        check_embeddings("f", "x", bad)
    with pytest.raises(InputError, match=r"4 rows \(from 'q'\)"):
        check_embeddings("f", "k", torch.ones(3, 2), rows=4, like="q")


def test_int_accepts_integral_numbers_and_names_the_bound():
    import numpy as np

    from contrastkit.errors import check_int

    assert check_int("f", "k", 3, 1) == 3 and type(check_int("f", "k", np.int64(4), 1)) is int
    assert check_int("f", "k", -7) == -7  # no bound
    for bad, bound in ((0, ">= 1"), (True, ">= 1"), (2.0, ">= 1"), ("3", ">= 1")):
        with pytest.raises(InputError, match=f"f: argument 'k' must be an int {bound}; got"):
            check_int("f", "k", bad, 1)
    with pytest.raises(InputError, match=r"f: argument 'k' must be an int in \[1, 5\]; got 6"):
        check_int("f", "k", 6, 1, 5)


def test_generator_accepts_none_or_a_generator():
    from contrastkit.errors import check_generator

    g = torch.Generator()
    assert check_generator("f", g) is g and check_generator("f", None) is None
    with pytest.raises(
        InputError, match="f: argument 'generator' must be a torch.Generator or None; got int"
    ):
        check_generator("f", 0)
