"""Tasks for the distributed tests: module-level functions ``task(rank, world, *args)`` that the
worker processes of ``tests/process_pool.ProcessPool`` run inside a real gloo process group.

Every task builds the *global* batch from a seeded generator (all ranks build the same tensors),
takes its rank's rows, runs the distributed loss, and also computes the single-process loss of the
whole batch as the reference; only small numpy arrays go back through the queues. The checks that
need every rank's result (mean over ranks, DDP averaging) are the ``check_*`` helpers at the end,
called by the tests in the main process.

A *case* (``CASES[name](sizes, dtype, **options)``) describes one loss configuration:

    data       name -> (global tensor, rows of each rank): the inputs, split by rows
    params     name -> float: scalar leaves shared by every rank (scale, bias)
    loss       loss(data, params, mode): the loss under ``distributed=mode`` on given inputs
    reference  reference(data, params): the single-process loss of the global batch
    outputs    outputs(rank): where rank r's per-anchor values lie in the global ``"none"`` vector
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from contrastkit import clip_loss, info_nce, mnrl, nt_xent, siglip_loss, supcon
from contrastkit.distributed import Layout, agreement, all_reduce_mean, ring_blocks

DIM = 5  # embedding dimension
RAW_DIM = 4  # input dimension of the tiny encoders in the DDP tasks
GUIDE_DIM = 4  # GISTEmbed guide dimension


# ---- cases -------------------------------------------------------------------------------------
@dataclass
class Case:
    data: dict[str, tuple[torch.Tensor, tuple[int, ...]]]
    params: dict[str, float]
    loss: Callable[[dict, dict, str | None], torch.Tensor]
    reference: Callable[[dict, dict], torch.Tensor]
    outputs: Callable[[int], torch.Tensor]
    frozen: tuple[str, ...] = ()  # floating inputs without gradient (guide embeddings)

    def differentiable(self) -> list[str]:
        return [k for k, (t, _) in self.data.items() if t.is_floating_point() and k not in self.frozen]


def rows_of(counts: tuple[int, ...], rank: int) -> slice:
    start = sum(counts[:rank])
    return slice(start, start + counts[rank])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    """Drawn in float64 then cast, so that float32 and float64 cases see the same numbers."""
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _unit(g: torch.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    return F.normalize(_randn(g, *shape, dtype=dtype), dim=-1)


def _row_outputs(sizes: tuple[int, ...]) -> Callable[[int], torch.Tensor]:
    return lambda rank: torch.arange(sum(sizes))[rows_of(sizes, rank)]


def clip_case(sizes, dtype, *, label_smoothing=0.0, ids=False, chunk_size=None, bias=False, seed=0) -> Case:
    g, n = _gen(seed), sum(sizes)
    data = {"x": (_unit(g, n, DIM, dtype=dtype), sizes), "y": (_unit(g, n, DIM, dtype=dtype), sizes)}
    if ids:  # ids repeat within and across ranks
        data["ids"] = (torch.arange(n)[torch.randperm(n, generator=g)] % 3, sizes)
    params = {"scale": 4.0} | ({"bias": -1.5} if bias else {})

    def call(t, p, mode, chunk):
        with warnings.catch_warnings():  # a clip bias is warned about (it gets zero gradient)
            warnings.simplefilter("ignore")
            return clip_loss(
                t["x"],
                t["y"],
                p["scale"],
                p.get("bias"),
                label_smoothing=label_smoothing,
                sample_ids=t.get("ids"),
                chunk_size=chunk,
                distributed=mode,
            )

    return Case(
        data,
        params,
        lambda t, p, mode: call(t, p, mode, chunk_size),
        lambda t, p: call(t, p, None, 0),
        _row_outputs(sizes),
    )


def siglip_case(sizes, dtype, *, ids=False, chunk_size=None, seed=1) -> Case:
    g, n = _gen(seed), sum(sizes)
    data = {"x": (_unit(g, n, DIM, dtype=dtype), sizes), "y": (_unit(g, n, DIM, dtype=dtype), sizes)}
    if ids:
        data["ids"] = (torch.arange(n)[torch.randperm(n, generator=g)] % 3, sizes)

    def call(t, p, mode, chunk):
        return siglip_loss(
            t["x"], t["y"], p["scale"], p["bias"], sample_ids=t.get("ids"), chunk_size=chunk, distributed=mode
        )

    return Case(
        data,
        {"scale": 3.0, "bias": -2.0},
        lambda t, p, mode: call(t, p, mode, chunk_size),
        lambda t, p: call(t, p, None, 0),
        _row_outputs(sizes),
    )


def info_nce_case(
    sizes,
    dtype,
    *,
    more_keys=True,
    negatives=None,
    reduction="mean",
    chunk_size=None,
    seed=2,
) -> Case:
    """Rank r holds B_r queries and M_r >= B_r keys (its first B_r keys are its queries'
    positives); ``negatives``: None, ``"shared"`` ((K_r, D), K_r differing per rank) or
    ``"per_query"`` ((B_r, 2, D))."""
    g, n = _gen(seed), sum(sizes)
    key_sizes = tuple(b + (1 + r % 2 if more_keys else 0) for r, b in enumerate(sizes))
    data = {
        "q": (_unit(g, n, DIM, dtype=dtype), sizes),
        "k": (_unit(g, sum(key_sizes), DIM, dtype=dtype), key_sizes),
    }
    if negatives == "shared":
        neg_sizes = tuple(2 + r % 2 for r in range(len(sizes)))
        data["neg"] = (_unit(g, sum(neg_sizes), DIM, dtype=dtype), neg_sizes)
    elif negatives == "per_query":
        data["neg"] = (_unit(g, n, 2, DIM, dtype=dtype), sizes)

    def loss(t, p, mode):
        return info_nce(
            t["q"],
            t["k"],
            p["scale"],
            extra_negatives=t.get("neg"),
            reduction=reduction,
            chunk_size=chunk_size,
            distributed=mode,
        )

    def reference(t, p):
        positive = torch.zeros(n, sum(key_sizes), dtype=torch.bool)
        for r, b in enumerate(sizes):
            q0, k0 = rows_of(sizes, r).start, rows_of(key_sizes, r).start
            positive[q0 + torch.arange(b), k0 + torch.arange(b)] = True
        return info_nce(
            t["q"],
            t["k"],
            p["scale"],
            positive_mask=positive,
            extra_negatives=t.get("neg"),
            reduction=reduction,
            chunk_size=0,
        )

    return Case(data, {"scale": 5.0}, loss, reference, _row_outputs(sizes))


def nt_xent_case(sizes, dtype, *, chunk_size=None, seed=3) -> Case:
    g, n = _gen(seed), sum(sizes)
    data = {"z1": (_randn(g, n, DIM, dtype=dtype), sizes), "z2": (_randn(g, n, DIM, dtype=dtype), sizes)}

    def call(t, mode, chunk):
        return nt_xent(t["z1"], t["z2"], 0.3, chunk_size=chunk, distributed=mode)

    return Case(
        data,
        {},
        lambda t, p, mode: call(t, mode, chunk_size),
        lambda t, p: call(t, None, 0),
        _row_outputs(sizes),
    )


def default_labels(sizes: tuple[int, ...]) -> list[int]:
    """Classes 0 and 1 on every rank, class 10 twice on the last rank only, a singleton class 20
    on rank 0 (an anchor without positive when there is one view)."""
    labels = []
    for r, b in enumerate(sizes):
        row = [i % 2 for i in range(b)]
        if r == len(sizes) - 1 and b >= 4:
            row[-2:] = [10, 10]
        if r == 0:
            row[-1] = 20
        labels += row
    return labels


def supcon_case(sizes, dtype, *, views=1, labels=None, reduction="mean", chunk_size=None, seed=4) -> Case:
    g, n = _gen(seed), sum(sizes)
    shape = (n, DIM) if views == 1 else (n, views, DIM)
    labels = torch.tensor(default_labels(sizes) if labels is None else labels, dtype=torch.int64)
    data = {"z": (_unit(g, *shape, dtype=dtype), sizes), "labels": (labels, sizes)}

    def call(t, mode, chunk):
        return supcon(
            t["z"],
            t["labels"],
            0.2,
            base_temperature=0.3,
            reduction=reduction,
            chunk_size=chunk,
            distributed=mode,
        )

    def outputs(rank):  # "none" is view-major: row v * N + i
        mine = torch.arange(n)[rows_of(sizes, rank)]
        return torch.cat([v * n + mine for v in range(views)])

    return Case(
        data, {}, lambda t, p, mode: call(t, mode, chunk_size), lambda t, p: call(t, None, 0), outputs
    )


def mnrl_case(
    sizes,
    dtype,
    *,
    negatives=None,
    guide=False,
    margin=0.0,
    margin_strategy="absolute",
    symmetric=False,
    chunk_size=None,
    seed=5,
) -> Case:
    """``negatives``: None, ``"one"`` ((B_r, D)) or ``"many"`` ((B_r, 2, D)); ``guide`` adds
    GISTEmbed guide embeddings of every input (frozen, per rank)."""
    g, n = _gen(seed), sum(sizes)
    neg_shape = {None: None, "one": (n, DIM), "many": (n, 2, DIM)}[negatives]
    anchors = _randn(g, n, DIM, dtype=dtype)
    data = {"a": (anchors, sizes), "p": (anchors + 0.8 * _randn(g, n, DIM, dtype=dtype), sizes)}
    if neg_shape is not None:
        data["neg"] = (_randn(g, *neg_shape, dtype=dtype), sizes)
    frozen = ()
    if guide:
        mix = _randn(g, DIM, GUIDE_DIM, dtype=dtype)  # the guide is a noisy view of the student
        for name in [k for k in ("a", "p", "neg") if k in data]:
            student = data[name][0]
            data["g_" + name] = (
                student @ mix + 0.5 * _randn(g, *student.shape[:-1], GUIDE_DIM, dtype=dtype),
                sizes,
            )
        frozen = tuple(k for k in data if k.startswith("g_"))

    def call(t, p, mode, chunk):
        gist = None if not guide else (t["g_a"], t["g_p"], t.get("g_neg"))
        return mnrl(
            t["a"],
            t["p"],
            t.get("neg"),
            scale=p["scale"],
            guide=gist,
            margin=margin,
            margin_strategy=margin_strategy,
            symmetric=symmetric,
            chunk_size=chunk,
            distributed=mode,
        )

    return Case(
        data,
        {"scale": 10.0},
        lambda t, p, mode: call(t, p, mode, chunk_size),
        lambda t, p: call(t, p, None, 0),
        _row_outputs(sizes),
        frozen,
    )


CASES: dict[str, Callable[..., Case]] = {
    "clip": clip_case,
    "siglip": siglip_case,
    "info_nce": info_nce_case,
    "nt_xent": nt_xent_case,
    "supcon": supcon_case,
    "mnrl": mnrl_case,
}


# ---- helpers used inside the workers ------------------------------------------------------------
def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy().copy()


def local_inputs(case: Case, rank: int, leaves: bool = True) -> dict[str, torch.Tensor]:
    """This rank's rows of every input; differentiable ones as fresh leaves requiring grad."""
    grad = set(case.differentiable()) if leaves else set()
    return {k: t[rows_of(c, rank)].clone().requires_grad_(k in grad) for k, (t, c) in case.data.items()}


def global_inputs(case: Case) -> dict[str, torch.Tensor]:
    grad = set(case.differentiable())
    return {k: t.clone().requires_grad_(k in grad) for k, (t, _) in case.data.items()}


def scalar_leaves(case: Case, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in case.params.items()}


def objective(
    out: torch.Tensor, weights: torch.Tensor | None, mode: str | None, world: int, index
) -> torch.Tensor:
    """What to backpropagate: the scalar loss itself; for ``reduction="none"`` a fixed weighted
    sum, scaled so that the same checks as for a scalar apply (a local rank holds only its
    anchors, so W * its part; under ``"gather"`` every rank holds all of them)."""
    if out.dim() == 0:
        return out
    if mode == "local":
        return world * torch.nansum(weights[index] * out)
    return torch.nansum(weights * out)


@contextlib.contextmanager
def gather_without_grad():
    """The pitfall of METHODS 2.4: ``Layout.gather`` / ``gather_others`` as a plain all_gather
    (no gradient to the other ranks' rows); this rank's own rows keep their gradient, as
    open_clip's ``gather_features(..., gather_with_grad=False, local_loss=...)`` does."""
    original = Layout.gather, Layout.gather_others

    def gather(self, x):
        if self.world == 1:
            return x
        everything = self.gather_values(x, local_first=False)
        return torch.cat([everything[: self.offset], x, everything[self.offset + self.rows :]])

    def gather_others(self, x):
        if self.world == 1:
            return x[:0]
        everything = self.gather_values(x, local_first=False)
        return torch.cat([everything[: self.offset], everything[self.offset + self.rows :]])

    Layout.gather, Layout.gather_others = gather, gather_others
    try:
        yield
    finally:
        Layout.gather, Layout.gather_others = original


def _control(control: str | None):
    return (
        gather_without_grad()
        if control in ("no_grad_gather", "no_grad_gather_times_w")
        else contextlib.nullcontext()
    )


# ---- tasks -------------------------------------------------------------------------------------
def exact(rank, world, name, sizes, mode, options=None, dtype="float64", control=None):
    """One loss under ``distributed=mode`` on this rank's rows, and the single-process reference.

    Returns the loss, the reference, this rank's output positions, the gradient of every local
    input next to the reference gradient of the same rows, and the scalar leaves' gradients.
    ``control``: None, ``"no_grad_gather"`` (the pitfall) or ``"no_grad_gather_times_w"`` (the
    pitfall "fixed" by multiplying the loss by W).
    """
    assert len(sizes) == world
    dtype = getattr(torch, dtype)
    case = CASES[name](tuple(sizes), dtype, **(options or {}))

    glob, ref_params = global_inputs(case), scalar_leaves(case, dtype)
    ref = case.reference(glob, ref_params)
    weights = None if ref.dim() == 0 else _randn(_gen(99), ref.shape[0], dtype=dtype)
    objective(ref, weights, None, world, None).backward()

    local, params = local_inputs(case, rank), scalar_leaves(case, dtype)
    index = case.outputs(rank)
    with _control(control):
        out = case.loss(local, params, mode)
        if control == "no_grad_gather_times_w":
            out = out * world
        objective(out, weights, mode, world, index).backward()

    return {
        "value": _np(out),
        "ref": _np(ref),
        "index": _np(index),
        "grads": {
            k: (_np(local[k].grad), _np(glob[k].grad[rows_of(case.data[k][1], rank)]))
            for k in case.differentiable()
        },
        "param_grads": {k: (_np(params[k].grad), _np(ref_params[k].grad)) for k in case.params},
    }


class Towers(nn.Module):
    """One tiny encoder (Linear + L2 normalisation) per differentiable input of a case, a
    learnable log-scale and a bias when the case takes them."""

    def __init__(self, case: Case, dtype: torch.dtype) -> None:
        super().__init__()
        self.enc = nn.ModuleDict(
            {k: nn.Linear(RAW_DIM, case.data[k][0].shape[-1], dtype=dtype) for k in case.differentiable()}
        )
        self.log_scale = self.bias = None
        if "scale" in case.params:
            self.log_scale = nn.Parameter(torch.tensor(math.log(case.params["scale"]), dtype=dtype))
        if "bias" in case.params:
            self.bias = nn.Parameter(torch.tensor(case.params["bias"], dtype=dtype))

    def forward(self, raw: dict[str, torch.Tensor]):
        embeddings = {k: F.normalize(self.enc[k](u), dim=-1) for k, u in raw.items()}
        params = {}
        if self.log_scale is not None:
            params["scale"] = self.log_scale.exp()
        if self.bias is not None:
            params["bias"] = self.bias
        return embeddings, params


def ddp(rank, world, name, sizes, mode, options=None, control=None, dtype="float64"):
    """A DDP-wrapped ``Towers`` model on this rank's slice of a global batch of raw inputs;
    returns every parameter's DDP-averaged gradient next to the single-process full-batch
    gradient of an identical non-DDP copy."""
    assert len(sizes) == world
    dtype = getattr(torch, dtype)
    case = CASES[name](tuple(sizes), dtype, **(options or {}))
    g = _gen(7)
    raw = {k: _randn(g, *case.data[k][0].shape[:-1], RAW_DIM, dtype=dtype) for k in case.differentiable()}
    fixed = {k: t for k, (t, _) in case.data.items() if k not in raw}

    torch.manual_seed(1234)  # the same initialisation on every rank
    model = Towers(case, dtype)
    reference = copy.deepcopy(model)

    emb, params = reference(raw)
    ref = case.reference(emb | fixed, params)
    ref.backward()

    wrapped = DistributedDataParallel(model)
    local_raw = {k: u[rows_of(case.data[k][1], rank)] for k, u in raw.items()}
    local_fixed = {k: t[rows_of(case.data[k][1], rank)] for k, t in fixed.items()}
    with _control(control):
        emb, params = wrapped(local_raw)
        loss = case.loss(emb | local_fixed, params, mode)
        if control == "no_grad_gather_times_w":
            loss = loss * world
        loss.backward()

    mine = dict(model.named_parameters())
    return {
        "value": _np(loss),
        "ref": _np(ref),
        "grads": {k: (_np(p.grad), _np(mine[k].grad)) for k, p in reference.named_parameters()},
    }


def corrupt(t: torch.Tensor, kind: str) -> torch.Tensor:
    t = t.detach().clone()
    if kind == "nan":
        t.view(-1)[0] = float("nan")
        return t
    if kind == "shape":  # a 4-D tensor: no loss takes one
        return t[None, None]
    if kind == "rows":
        return t[:-1]
    if kind == "empty":
        return t[:0]
    raise ValueError(kind)


def bad_input(rank, world, name, sizes, mode, bad_ranks, kind, target=None, options=None):
    """Ranks in ``bad_ranks`` corrupt one input (``target``: default the first); every rank
    returns (error type name, message) of the loss call, and the result of a collective made
    after it (the mean of the ranks), which shows the process group is still in step."""
    case = CASES[name](tuple(sizes), torch.float64, **(options or {}))
    inputs = local_inputs(case, rank, leaves=False)
    params = scalar_leaves(case, torch.float64)
    if rank in bad_ranks and kind == "narrow":  # locally consistent, one dimension less than the others
        inputs = inputs | {k: inputs[k][..., :-1] for k in case.differentiable()}
    elif rank in bad_ranks:
        target = target or case.differentiable()[0]
        inputs = inputs | {target: corrupt(inputs[target], kind)}
    try:
        case.loss(inputs, params, mode)
        got = ("ok", "")
    except Exception as err:  # noqa: BLE001 - the type and message go back to the test
        got = (type(err).__name__, str(err))
    return got, all_reduce_mean(float(rank))


def agreement_rows(rank, world, rows):
    """``agreement`` alone with ``rows[rank]`` rows on each rank: the layout, or the error."""
    try:
        with agreement("probe", "local") as agreed:
            agreed.batch = torch.zeros(rows[rank], 4)
    except Exception as err:  # noqa: BLE001
        return (type(err).__name__, str(err))
    return agreed.layout.sizes, agreed.layout.rank


def layout_helpers(rank, world, sizes):
    """Layout's collectives on uneven rows: gather (values and gradient), gather_others,
    gather_local_first, gather_values (int64, bool), per_row, count, reduce."""
    with agreement("probe", "local") as agreed:
        agreed.batch = torch.zeros(sizes[rank], 4)
    lay = agreed.layout
    n, mine = sum(sizes), rows_of(tuple(sizes), rank)
    out = {"sizes": lay.sizes, "rank": lay.rank, "offset": lay.offset, "rows": lay.rows, "total": lay.total}

    full = _randn(_gen(11), n, 3, dtype=torch.float64)
    x = full[mine].clone().requires_grad_()
    weights = [_randn(_gen(20 + r), n, 3, dtype=torch.float64) for r in range(world)]
    gathered = lay.gather(x)
    (gathered * weights[rank]).sum().backward()
    out["gather"] = (_np(gathered), _np(full))
    out["gather_grad"] = (_np(x.grad), _np(sum(weights)[mine]))  # every rank's weight reaches the owner
    others = torch.cat([full[: mine.start], full[mine.stop :]])
    out["gather_others"] = (_np(lay.gather_others(x)), _np(others))
    out["gather_local_first"] = (_np(lay.gather_local_first(x)), _np(torch.cat([full[mine], others])))

    ids = torch.arange(n, dtype=torch.int64) * 7 - 20
    flags = torch.arange(n) % 3 == 0
    out["values_int64"] = (_np(lay.gather_values(ids[mine], local_first=False)), _np(ids))
    out["values_int64_local_first"] = (
        _np(lay.gather_values(ids[mine])),
        _np(torch.cat([ids[mine], ids[: mine.start], ids[mine.stop :]])),
    )
    out["values_bool"] = (_np(lay.gather_values(flags[mine], local_first=False)), _np(flags))
    out["values_dtypes"] = (
        str(lay.gather_values(ids[mine]).dtype),
        str(lay.gather_values(flags[mine]).dtype),
    )

    out["per_row"] = lay.per_row(3).sizes
    out["count"] = lay.count(rank + 1)

    # reduce: the global anchors' losses with some invalid (no positive), split by rank
    losses = _randn(_gen(12), n, dtype=torch.float64).abs()
    valid = torch.arange(n) % 3 != 1
    for reduction in ("mean", "sum", "none"):
        leaf = losses[mine][valid[mine]].clone().requires_grad_()
        reduced = lay.reduce("probe", leaf, valid[mine], reduction)
        if reduction != "none":
            reduced.backward()
        out[f"reduce_{reduction}"] = (_np(reduced), _np(leaf.grad))
    out["reduce_ref"] = (
        float(losses[valid].mean()),
        float(losses[valid].sum()),
        _np(torch.where(valid, losses, float("nan"))[mine]),
        int(valid.sum()),
    )
    # one rank without a valid anchor still works; none anywhere raises on every rank
    only_rank0 = valid[mine] & (rank == 0)
    out["reduce_one_rank_valid"] = float(
        lay.reduce("probe", losses[mine][only_rank0], only_rank0, "mean").detach()
    )
    out["reduce_one_rank_ref"] = float(
        losses[rows_of(tuple(sizes), 0)][valid[rows_of(tuple(sizes), 0)]].mean()
    )
    nothing = torch.zeros(lay.rows, dtype=torch.bool)
    try:
        lay.reduce("probe", losses[:0], nothing, "mean")
        out["reduce_empty"] = ("ok", "")
    except Exception as err:  # noqa: BLE001
        out["reduce_empty"] = (type(err).__name__, str(err))
    return out


def resized(rank, world, sizes, other):
    """``Layout.resized``: the layout of a second tensor with ``other[rank]`` rows per rank,
    then a gather along it (keys, negatives); returns (sizes, rank, gathered rows)."""
    lay = Layout(tuple(sizes), rank)
    keys = lay.resized(other[rank])
    if keys.world != world:  # a gather along it could not even start
        return keys.sizes, keys.rank, None
    gathered = keys.gather(torch.full((other[rank], 2), float(rank), dtype=torch.float64))
    return keys.sizes, keys.rank, _np(gathered[:, 0])


def _ring_weight(receiver: int, owner: int, rows: int) -> torch.Tensor:
    """A distinct weight for the block of ``owner`` as seen by ``receiver``."""
    return (1.0 + 10 * receiver + owner) * torch.arange(1, 2 * rows + 1, dtype=torch.float64).reshape(rows, 2)


def _ring_block(owner: int, rows: int) -> torch.Tensor:
    return (100.0 * owner + torch.arange(2 * rows, dtype=torch.float64)).reshape(rows, 2)


def ring(rank, world, sizes):
    """``ring_blocks`` alone: the (owner, block) sequence this rank sees, and the gradient its
    own block gets back from every rank's use of it, next to the expected one."""
    lay = Layout(tuple(sizes), rank)
    x = _ring_block(rank, sizes[rank]).requires_grad_()
    seen, total = [], 0.0
    for owner, block in ring_blocks(x, lay):
        seen.append((owner, _np(block)))
        total = total + (_ring_weight(rank, owner, sizes[owner]) * block).sum() + 0.5 * (block**2).sum()
    total.backward()
    want = sum(_ring_weight(r, rank, sizes[rank]) for r in range(world)) + world * _ring_block(
        rank, sizes[rank]
    )
    expected_blocks = {o: _np(_ring_block(o, sizes[o])) for o in range(world)}
    return {"seen": seen, "expected_blocks": expected_blocks, "grad": (_np(x.grad), _np(want))}


# ---- checks, run in the main process on every rank's result ---------------------------------------
def _close(got, want, atol, what):
    assert got is not None, f"{what}: no gradient reached this input"
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, equal_nan=True, err_msg=what)


def check_exact(results: list[dict], mode: str, atol: float = 1e-10) -> None:
    """The distributed contract (METHODS 2.4) on every rank's ``exact`` result:

    - value: ``"gather"`` -> every rank returns L; ``"local"`` / ``"ring"`` -> mean_r L_r = L
      (``reduction="none"``: each rank its anchors' losses, or all of them under gather);
    - inputs: z_r.grad / W = dL/dz[rows of r] on every rank;
    - scalar leaves: mean over ranks of their grads = dL/dscale, dL/dbias (DDP's averaging).
    """
    world = len(results)
    ref = results[0]["ref"]
    for r, res in enumerate(results):
        if mode == "gather":
            _close(res["value"], ref, atol, f"rank {r}: gather value")
        elif np.ndim(ref) == 1:
            _close(res["value"], ref[res["index"]], atol, f"rank {r}: this rank's per-anchor losses")
    if mode != "gather" and np.ndim(ref) == 0:
        _close(np.mean([res["value"] for res in results]), ref, atol, "mean over ranks of the local losses")
    for r, res in enumerate(results):
        for name, (got, want) in res["grads"].items():
            _close(None if got is None else got / world, want, atol, f"rank {r}: grad of {name} / W")
    for name, (_, want) in results[0]["param_grads"].items():
        got = [res["param_grads"][name][0] for res in results]
        assert all(g is not None for g in got), f"no gradient reached {name}"
        _close(np.mean(got, axis=0), want, atol, f"mean over ranks of the grad of {name}")


def check_ddp(results: list[dict], mode: str, atol: float = 1e-10) -> None:
    """Every rank's DDP-averaged parameter gradients = the single-process full-batch ones."""
    ref = results[0]["ref"]
    if mode == "gather":
        for r, res in enumerate(results):
            _close(res["value"], ref, atol, f"rank {r}: gather value")
    else:
        _close(np.mean([res["value"] for res in results]), ref, atol, "mean over ranks of the local losses")
    for r, res in enumerate(results):
        assert set(res["grads"]) == set(results[0]["grads"])
        for name, (want, got) in res["grads"].items():
            _close(got, want, atol, f"rank {r}: DDP grad of {name}")


def trainer_ddp_guards(rank, world):
    """``train.parallel`` under a real process group: a parameter the loss never reaches is named
    after the first backward; a BatchNorm tower on CPU is warned about (on rank 0)."""
    import warnings

    from contrastkit.train.config import ConfigError
    from contrastkit.train.parallel import check_every_parameter_learns, wrap_model

    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {"towers": torch.nn.ModuleDict({"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(3, 2)})}
    )
    wrapped = wrap_model(model, torch.device("cpu"))
    wrapped.module.towers["a"](torch.randn(4, 3)).sum().backward()
    try:
        check_every_parameter_learns(model)
        unused = None
    except ConfigError as err:
        unused = str(err)
    norm = torch.nn.ModuleDict({"towers": torch.nn.ModuleDict({"a": torch.nn.BatchNorm1d(3)})})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrap_model(norm, torch.device("cpu"))
    return unused, [str(w.message) for w in caught]


def average_loss_and_aux_gradients(rank, world):
    """``average_loss_gradients`` averages the logit scale's gradient and those of the extra
    (auxiliary-loss) parameters over ranks; the towers' are DDP's and left alone."""
    from contrastkit.train.parallel import average_loss_gradients

    model = torch.nn.Module()
    model.towers = torch.nn.Linear(2, 2)
    model.logit_scale = torch.nn.Parameter(torch.zeros(()))
    aux = torch.nn.Parameter(torch.zeros(3))
    for p in (*model.parameters(), aux):
        p.grad = torch.full_like(p, float(rank + 1))
    average_loss_gradients(model, [aux])
    return float(model.logit_scale.grad), aux.grad.tolist(), model.towers.weight.grad.flatten().tolist()
