"""The tiled exact engine: log-sum-exps and softplus sums of l = s x y^T + b in O(B) memory.

The (B, M) logit matrix is never held: it is walked in tiles of ``rows x cols``, each from one
matmul, merged into per-row (and per-column) log-sum-exps with a running ``logaddexp``, and
recomputed tile by tile in the backward pass. Only x, y, s, b and the O(B + M) results are saved.

For upstream gradients g_r (B,) and g_c (M,) of the row and column LSEs r, c:

    G_ij = g_r,i e^{l_ij - r_i} + g_c,j e^{l_ij - c_j}
    dx_i = s sum_j G_ij y_j,   dy_j = s sum_i G_ij x_i,   ds = sum_ij G_ij <x_i, y_j>,   db = sum_ij G_ij

and for the softplus sum S = sum_ij softplus(l_ij) the same with G_ij = g sigmoid(l_ij). Every loss
built on these (CLIP, InfoNCE, NT-Xent, SupCon, SigLIP) adds its O(B D) positive terms with plain
autograd; see METHODS.md section 2 and docs/performance.md.
"""

from __future__ import annotations

import numbers

import torch

from contrastkit.errors import InputError

PLAIN_LOGITS_BUDGET_BYTES = 16 * 2**20
"""``chunk_size=None`` keeps the plain (materialised) path while the logit matrix fits in this
(B = 2048 square in float32; tiled from 2049). On a 2-core CPU the tiled path is within a few
milliseconds at B = 1024 and faster from B = 4096 (bench/losses.py, docs/performance.md)."""

TILE_ELEMENTS = 2**19
"""Logits per tile (2 MiB in float32): small enough to stay in cache, large enough for a fast GEMM."""

AUTO_TILE_ROWS = 256


def resolve_chunk_size(fn: str, chunk_size: int | None, rows: int, cols: int, dtype: torch.dtype) -> int:
    """The tile rows a loss uses: 0 for the plain path, else a positive row count.

    ``None`` picks the plain path while rows x cols logits fit ``PLAIN_LOGITS_BUDGET_BYTES`` and
    ``AUTO_TILE_ROWS`` beyond it; an int >= 1 is used as given; 0 means never tile.
    """
    if chunk_size is None:
        itemsize = torch.finfo(dtype).bits // 8
        return 0 if rows * cols * itemsize <= PLAIN_LOGITS_BUDGET_BYTES else AUTO_TILE_ROWS
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 0:
        raise InputError(
            f"{fn}: 'chunk_size' must be None (automatic), 0 (never tile) or a positive number of "
            f"tile rows; got {chunk_size!r}."
        )
    return int(chunk_size)


def choose_tiling(
    fn: str,
    chunk_size: int | None,
    rows: int,
    cols: int,
    dtype: torch.dtype,
    unsupported: str | None = None,
) -> int:
    """The tile rows to use, 0 for plain; ``unsupported`` names an option only the plain path has.

    With ``chunk_size=None`` such an option silently selects the plain path (it is automatic);
    an explicit ``chunk_size >= 1`` with it is an error that names it.
    """
    chunk = resolve_chunk_size(fn, chunk_size, rows, cols, dtype)
    if chunk and unsupported is not None:
        if chunk_size is not None:
            raise InputError(
                f"{fn}: the tiled path (chunk_size={chunk_size}) does not support {unsupported}; "
                f"pass chunk_size=0 (plain) or None."
            )
        return 0
    return chunk


def _plan(fn: str, x: torch.Tensor, y: torch.Tensor, chunk_size: int, col_chunk_size: int | None) -> int:
    """Check the tile sizes and the operands; return the column tile."""
    for name, value in (("chunk_size", chunk_size), ("col_chunk_size", col_chunk_size)):
        if value is None and name == "col_chunk_size":
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise InputError(f"{fn}: '{name}' must be a positive number of tile rows/columns; got {value!r}.")
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise InputError(
            f"{fn}: x and y must be (B, D) and (M, D); got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    col_tile = max(TILE_ELEMENTS // chunk_size, 1) if col_chunk_size is None else col_chunk_size
    return max(1, min(col_tile, y.shape[0]))


def _tiles(rows: int, cols: int, row_tile: int, col_tile: int):
    for i0 in range(0, rows, row_tile):
        for j0 in range(0, cols, col_tile):
            yield slice(i0, min(i0 + row_tile, rows)), slice(j0, min(j0 + col_tile, cols))


def _tile_logits(
    xs: torch.Tensor, y: torch.Tensor, bias: torch.Tensor | None, i: slice, j: slice, skip_diagonal: bool
) -> torch.Tensor:
    """l_IJ = xs_I y_J^T (+ b), with l_ii = -inf on the global diagonal when ``skip_diagonal``."""
    logits = xs[i] @ y[j].T if bias is None else torch.addmm(bias, xs[i], y[j].T)
    if skip_diagonal:
        lo, hi = max(i.start, j.start), min(i.stop, j.stop)
        if lo < hi:
            logits[lo - i.start : hi - i.start, lo - j.start : hi - j.start].fill_diagonal_(float("-inf"))
    return logits


def _backward(ctx, x, y, scale, bias, row_tile, col_tile, skip_diagonal, tile_grad):
    """Recompute every tile, turn it into G = dL/dl with ``tile_grad(logits, i, j)`` (None: no
    gradient from this tile), and accumulate d(xs) += G y_J, dy += G^T xs_I, db += sum G.

    Returns the gradients of (x, y, scale, bias): dx = s d(xs), ds = sum <x, d(xs)>, each only
    where ``ctx.needs_input_grad`` asks for it.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            "the tiled engine gives first derivatives only (create_graph=True asked for more); use "
            "chunk_size=0 (the plain path) for gradient penalties or other higher-order terms."
        )
    xs = x * scale
    grad_xs, grad_y = torch.zeros_like(x), torch.zeros_like(y)
    grad_bias = x.new_zeros(())
    for i, j in _tiles(x.shape[0], y.shape[0], row_tile, col_tile):
        grad = tile_grad(_tile_logits(xs, y, bias, i, j, skip_diagonal), i, j)
        if grad is None:
            continue
        grad_xs[i].addmm_(grad, y[j])
        grad_y[j].addmm_(grad.T, xs[i])
        if bias is not None:
            grad_bias += grad.sum()
    need_x, need_y, need_scale, need_bias = ctx.needs_input_grad[:4]
    return (
        grad_xs * scale if need_x else None,
        grad_y if need_y else None,
        (grad_xs * x).sum() if need_scale else None,
        grad_bias if need_bias else None,
    )


class _TiledLogSumExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, scale, bias, row_tile, col_tile, want_cols, skip_diagonal):
        xs = x * scale
        r = x.new_full((x.shape[0],), float("-inf"))
        c = y.new_full((y.shape[0],), float("-inf")) if want_cols else y.new_empty(0)
        for i, j in _tiles(x.shape[0], y.shape[0], row_tile, col_tile):
            logits = _tile_logits(xs, y, bias, i, j, skip_diagonal)
            r[i] = torch.logaddexp(r[i], torch.logsumexp(logits, dim=1))
            if want_cols:
                c[j] = torch.logaddexp(c[j], torch.logsumexp(logits, dim=0))
        ctx.save_for_backward(x, y, scale, bias, r, c)
        ctx.plan = (row_tile, col_tile, skip_diagonal)
        ctx.set_materialize_grads(False)
        return r, c

    @staticmethod
    def backward(ctx, grad_r, grad_c):
        x, y, scale, bias, r, c = ctx.saved_tensors
        row_tile, col_tile, skip_diagonal = ctx.plan

        def tile_grad(logits, i, j):
            grad = None
            if grad_c is not None and c.numel():
                grad = torch.sub(logits, c[j]).exp_().mul_(grad_c[j])
            if grad_r is not None:
                row_part = logits.sub_(r[i, None]).exp_().mul_(grad_r[i, None])
                grad = row_part if grad is None else grad.add_(row_part)
            return grad

        grads = _backward(ctx, x, y, scale, bias, row_tile, col_tile, skip_diagonal, tile_grad)
        return (*grads, None, None, None, None)


class _TiledSoftplusSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, scale, bias, row_tile, col_tile):
        xs = x * scale
        total = x.new_zeros(())
        zero = x.new_zeros(())
        for i, j in _tiles(x.shape[0], y.shape[0], row_tile, col_tile):
            total += torch.logaddexp(_tile_logits(xs, y, bias, i, j, False), zero).sum()
        ctx.save_for_backward(x, y, scale, bias)
        ctx.plan = (row_tile, col_tile)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        x, y, scale, bias = ctx.saved_tensors
        row_tile, col_tile = ctx.plan
        grads = _backward(
            ctx,
            x,
            y,
            scale,
            bias,
            row_tile,
            col_tile,
            False,
            lambda logits, i, j: logits.sigmoid_().mul_(grad_total),
        )
        return (*grads, None, None)


def _as_tensor(value: float | torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    if value is None or isinstance(value, torch.Tensor):
        return value if value is None else value.to(like.dtype)
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def tiled_logsumexp(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float | torch.Tensor,
    bias: float | torch.Tensor | None = None,
    *,
    chunk_size: int = AUTO_TILE_ROWS,
    col_chunk_size: int | None = None,
    cols: bool = False,
    skip_diagonal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row (and column) log-sum-exps of l = scale * x y^T + bias, without holding l.

        r_i = log sum_j exp l_ij   (B,),      c_j = log sum_i exp l_ij   (M,) when ``cols``

    Both come from the same matmul per tile. With ``skip_diagonal`` (x holds the first B rows of
    y's set, B <= M) the self-similarity l_ii is left out, as NT-Xent and SupCon need.

    Args:
        x: (B, D), y: (M, D) in the compute dtype (float32 or float64); gradients flow to both.
        scale: s, a float or 0-d tensor (gradient when it requires one).
        bias: optional b, a float or 0-d tensor (gradient when it requires one).
        chunk_size: tile rows (>= 1).
        col_chunk_size: tile columns; default ``TILE_ELEMENTS // chunk_size``.

    Returns:
        (r, c): r (B,), and c (M,) or an empty tensor when ``cols`` is False.
    """
    col_tile = _plan("tiled_logsumexp", x, y, chunk_size, col_chunk_size)
    if skip_diagonal and x.shape[0] > y.shape[0]:
        raise InputError(
            f"tiled_logsumexp: skip_diagonal needs x to be the first rows of y's set (B <= M); got "
            f"{x.shape[0]} and {y.shape[0]} rows."
        )
    return _TiledLogSumExp.apply(
        x, y, _as_tensor(scale, x), _as_tensor(bias, x), chunk_size, col_tile, cols, skip_diagonal
    )


def tiled_softplus_sum(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float | torch.Tensor,
    bias: float | torch.Tensor | None = None,
    *,
    chunk_size: int = AUTO_TILE_ROWS,
    col_chunk_size: int | None = None,
) -> torch.Tensor:
    """S = sum_ij softplus(scale * <x_i, y_j> + bias) as a 0-d tensor, without holding the logits.

    x: (B, D), y: (M, D) in the compute dtype; arguments as ``tiled_logsumexp``. Softplus is the
    exact ``logaddexp(l, 0)``, so the sum matches the plain SigLIP loss to rounding.
    """
    col_tile = _plan("tiled_softplus_sum", x, y, chunk_size, col_chunk_size)
    return _TiledSoftplusSum.apply(x, y, _as_tensor(scale, x), _as_tensor(bias, x), chunk_size, col_tile)
