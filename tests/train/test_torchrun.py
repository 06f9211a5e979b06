"""``contrastkit train`` under real ``torchrun`` (gloo on loopback): the same run as one process,
multi-node rendezvous, a killed worker restarting from its checkpoint, a writer killed mid-save,
and a bad batch on one rank stopping every rank with its message."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import TINY_RUN
from process_pool import free_port
from stream_shards import streamed_spec, write_shards

ENTRY = Path(__file__).with_name("torchrun_entry.py")
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "shapes-clip.yaml"
STEPS = ["train.steps=6", "train.checkpoint_every=3"]
TIMEOUT_S = 180


def _args(out: Path, extra: list[str] = (), resume: bool = False) -> list[str]:
    sets = [arg for item in [*TINY_RUN, *STEPS, *extra] for arg in ("--set", item)]
    return ["train", str(CONFIG), "--out", str(out), *sets, *(["--resume"] if resume else [])]


def _env(fault: str = "") -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "FAULT": fault}


def torchrun(
    out: Path, *launch: str, fault: str = "", extra: list[str] = (), resume: bool = False
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", *launch, str(ENTRY), *_args(out, extra, resume)]
    return subprocess.run(command, env=_env(fault), capture_output=True, text=True, timeout=TIMEOUT_S)


def single(out: Path, extra: list[str] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ENTRY), *_args(out, extra)]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)


def two_workers(
    out: Path, fault: str = "", restarts: int = 0, extra: list[str] = ()
) -> subprocess.CompletedProcess:
    launch = ("--standalone", "--nproc_per_node", "2", f"--max-restarts={restarts}")
    return torchrun(out, *launch, fault=fault, extra=extra)


def losses(run: Path) -> dict[int, float]:
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)), f"log.csv repeats or reorders steps: {steps}"
    return {int(r["step"]): float(r["loss"]) for r in rows}


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process and two torchrun workers, same config and global batch."""
    root = tmp_path_factory.mktemp("torchrun")
    _ok(single(root / "one"))
    _ok(two_workers(root / "two"))
    return root / "one", root / "two"


def test_two_workers_train_the_same_run_as_one_process(runs):
    one, two = runs
    want, got = losses(one), losses(two)
    assert list(got) == list(range(1, 7))
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=2e-6), f"step {step}"
    metrics_one = json.loads((one / "metrics.json").read_text())
    metrics_two = json.loads((two / "metrics.json").read_text())
    for key, value in metrics_one.items():
        if not key.startswith("train/"):
            assert metrics_two[key] == pytest.approx(value, abs=1e-4), key


@pytest.mark.parametrize(
    "extra",
    [
        # GradCache: 15 -> 8 + 7 rows, micro-batches of 7: two on rank 0, one on rank 1 (both
        # ranks must take the GradCache path, or DDP's collectives would not pair up)
        pytest.param(["train.batch_size=15", "train.micro_batch_size=7"], id="gradcache-uneven"),
        # SigLIP's learnable bias and scale (averaged by the trainer, not DDP), the ring exchange
        pytest.param(["loss.name=siglip", "model.init_bias=-10", "loss.distributed=ring"], id="siglip-ring"),
        # a loss without a distributed form runs on gathered inputs; uneven global batch 15 -> 8 + 7
        pytest.param(
            [
                "model.towers={image: {type: cnn, width: 8, depth: 2}}",
                "data.views=2",
                "data.augment=true",
                "loss.name=dcl",
                "train.batch_size=15",
            ],
            id="dcl-gathered",
        ),
    ],
)
def test_other_paths_under_two_workers_match_one_process(extra, tmp_path):
    _ok(single(tmp_path / "one", extra))
    _ok(two_workers(tmp_path / "two", extra=extra))
    # float32 sums in another order drift apart by a few ulps per step
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=2e-6, abs=2e-6)


def test_rank_zero_writes_and_the_checkpoint_holds_every_ranks_generator(runs):
    _, two = runs
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step-000003", "step-000006"]
    assert (two / "report.html").is_file() and (two / "config.yaml").is_file()
    tensors = load_file(two / "checkpoints" / "step-000006" / "optimizer.safetensors")
    assert "rng.torch_cpu" in tensors and "rng.rank1.torch_cpu" in tensors
    assert not (tensors["rng.torch_cpu"] == tensors["rng.rank1.torch_cpu"]).all()


def test_two_nodes_meet_through_the_c10d_rendezvous(runs, tmp_path):
    out, port = tmp_path / "nodes", free_port()
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=contrastkit-test",
    ]
    nodes = [
        subprocess.Popen(
            [*launch, str(ENTRY), *_args(out)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for node in nodes:
        stdout, stderr = node.communicate(timeout=TIMEOUT_S)
        assert node.returncode == 0, stdout[-2000:] + stderr[-4000:]
    want = losses(runs[1])
    assert losses(out) == pytest.approx(want, abs=2e-6)


def test_a_killed_worker_restarts_and_resumes_from_the_last_checkpoint(runs, tmp_path):
    out = tmp_path / "killed"
    result = two_workers(out, fault="kill_worker", restarts=1)
    _ok(result)
    assert "SIGKILL" in result.stderr or "Signals.SIGKILL" in result.stderr or "-9" in result.stderr
    # steps 4 and 5 were lost with the worker and redone from checkpoint 3, exactly as before
    assert losses(out) == pytest.approx(losses(runs[1]), abs=1e-6)
    assert json.loads((out / "metrics.json").read_text())["train/steps"] == 6


def test_a_writer_killed_mid_save_leaves_no_half_written_checkpoint(runs, tmp_path):
    out = tmp_path / "mid-save"
    _ok(two_workers(out, fault="kill_during_save", restarts=1))
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-000003", "step-000006"], names
    assert losses(out) == pytest.approx(losses(runs[1]), abs=1e-6)


def test_a_bad_batch_on_one_rank_stops_every_rank_with_its_message(tmp_path):
    result = two_workers(tmp_path / "bad", fault="bad_batch")
    assert result.returncode != 0
    assert "truncated (synthetic fault)" in result.stderr
    assert "stopped because rank 1 failed" in result.stderr
    assert not re.search(r"\[rank\d\]: Traceback", result.stderr), "a worker died with a traceback"


def test_streamed_shards_split_over_workers_resume_after_a_kill(tmp_path):
    """Each rank streams its own shards (positions differ per rank); a killed worker's group
    resumes every rank at its own position, exactly."""
    spec = streamed_spec(write_shards(tmp_path, shards=6, per_shard=12))
    _ok(two_workers(tmp_path / "clean", extra=[spec]))
    _ok(two_workers(tmp_path / "killed", fault="kill_worker", restarts=1, extra=[spec]))
    assert losses(tmp_path / "killed") == pytest.approx(losses(tmp_path / "clean"), abs=1e-6)
    state = json.loads((tmp_path / "clean" / "checkpoints" / "step-000006" / "state.json").read_text())
    assert len(state["data_positions"]) == 2


def test_a_restart_never_resumes_a_run_this_job_did_not_write(tmp_path):
    """Attempt 0 refuses a folder that holds another run; the restart must refuse it too."""
    out = tmp_path / "old"
    _ok(single(out, ["train.steps=3"]))
    result = two_workers(out, restarts=1, extra=["train.steps=6"])
    assert result.returncode != 0
    assert "already holds a run" in result.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000003"]


def test_a_restart_keeps_the_default_run_folder(tmp_path):
    """Without --out the folder is named once per job, so a restart resumes in it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["--max-restarts=1", str(ENTRY), *_args(tmp_path / "unused")]
    at = command.index("--out")
    del command[at : at + 2]
    result = subprocess.run(
        command, env=_env("kill_worker"), capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path
    )
    _ok(result)
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    assert list(losses(runs[0])) == list(range(1, 7))


def test_a_crash_after_training_restarts_into_the_report_alone(runs, tmp_path):
    out = tmp_path / "after"
    _ok(two_workers(out, fault="abort_after_fit", restarts=1))
    assert losses(out) == pytest.approx(losses(runs[1]), abs=1e-6)
    assert json.loads((out / "metrics.json").read_text())["train/steps"] == 6
    assert (out / "report.html").is_file()


def test_a_streamed_run_resumes_only_on_as_many_processes(tmp_path):
    spec = streamed_spec(write_shards(tmp_path, shards=6, per_shard=12))
    out = tmp_path / "one"
    _ok(single(out, [spec, "train.steps=3"]))
    result = torchrun(
        out, "--standalone", "--nproc_per_node", "2", extra=[spec, "train.steps=6"], resume=True
    )
    assert result.returncode != 0
    assert "resume it with 1 (not 2)" in result.stderr


def test_a_teacher_guided_loss_under_two_workers_matches_one_process(tmp_path):
    """SIGROT's plan couples the whole batch: every rank computes it on the gathered batch."""
    rng = np.random.default_rng(0)
    paths = {}
    for key in ("image", "text"):
        paths[key] = tmp_path / f"{key}.npy"
        np.save(paths[key], rng.standard_normal((96, 8)).astype(np.float32))
    extra = [f"loss.teacher={{image: {paths['image']}, text: {paths['text']}}}", "loss.name=sigrot_hybrid"]
    _ok(single(tmp_path / "one", extra))
    _ok(two_workers(tmp_path / "two", extra=extra))
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=2e-6, abs=2e-6)
