"""The trainer's DDP guards on real processes: unused parameters and BatchNorm."""

from __future__ import annotations

import dist_tasks


def test_ddp_names_parameters_without_gradient_and_warns_about_batch_norm(pool):
    for rank, (unused, warned) in enumerate(pool.run(dist_tasks.trainer_ddp_guards)):
        assert unused is not None and "towers.b.weight" in unused and "model.frozen" in unused
        if rank == 0:
            assert any("BatchNorm" in w and "GroupNorm" in w for w in warned), warned
        else:
            assert not warned


def test_loss_and_auxiliary_gradients_are_averaged_over_ranks(pool):
    for rank, (scale, aux, tower) in enumerate(pool.run(dist_tasks.average_loss_and_aux_gradients)):
        assert scale == 1.5 and aux == [1.5] * 3  # mean of 1 and 2
        assert tower == [rank + 1.0] * 4  # DDP's job, untouched here
