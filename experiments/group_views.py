"""Claim (C3, METHODS.md 3.10): member-subsampled group views keep group embeddings from being
dominated by heavy users.

    python experiments/group_views.py            # 3 seeds x 3 betas, a few minutes on one CPU thread
    python experiments/group_views.py --quick    # a few seconds (a smoke test)

Setup: synthetic group recommendation.

- World: users and items with unit taste vectors in R^8. A user's interactions are drawn without
  replacement from softmax(SHARPNESS * <item, taste>); light users have 4, heavy users 10x as
  many (40). 400 groups of 2..8 members (uniform), exactly one of them heavy; members are drawn
  among the least used users, so each of the 1600 light users sits in about one group and each
  of the 40 heavy users in about 10. A group's taste is the normalised mean of its members'
  tastes (every member counts equally), and it interacts with GROUP_TRAIN + 1 items drawn the
  same way (the last held out for the test).
- Model (small, after the release, changed so that heavy users can dominate): a member's token
  is the sum of the (32-d) embeddings of the items it chose (no id embedding, so its norm grows
  with its interaction count); Dropout(0.2) of the tokens [members; item], no input LayerNorm
  (the release has one), a 2-layer 2-head pre-LN Transformer encoder (the residual stream keeps
  the token norms; the release is post-LN); the group view embedding (NTX) is the masked mean of
  all outputs; the score is <masked mean of the member outputs, item output> / sqrt(32) (the
  release's linear head on the pooled vector barely beat chance here); p = sigmoid(score). A
  user is scored as the one-member group [user; item]. The world and model were chosen on the
  beta = 0 dominance ratio alone, never on the beta > 0 arms.
- Training: per epoch a user pass (Mixed loss) then a group pass (Mixed + beta * NTX over two
  member-subsampled views: keep 0.2 of groups above 5 members, tau = 1.0), one uniformly random
  negative item per positive, Adam lr 3e-3 (the paper: 1e-3; raised so that 12 epochs learn),
  batch 64. beta in {0, 0.025, 0.1}; same world, seed and batches for every beta.
- Metrics on every group's held-out item ranked against 50 (--quick: 20) items the group never
  chose: HR@10 and NDCG@10 for small (2-5 members, never subsampled) and large (6-8) groups.
  Dominance: the mean |change of p+| when the heavy member is dropped, against when one random
  light member is dropped (groups of >= 3); their ratio is 1 when the heavy user counts like
  any member and grows as it dominates. Mean and std over seeds.

The full run rewrites the marked block of docs/methods/pseudo-labels.md; ``--quick`` writes
nowhere unless ``--docs PATH`` is given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from contrastkit.losses.groupviews import PAD, group_view_nt_xent, mixed_recommendation_loss
from contrastkit.report.blocks import clear_gain, mean_std, print_progress, publish_result

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "methods" / "pseudo-labels.md"
BEGIN, END = "<!-- group-views-table:begin -->", "<!-- group-views-table:end -->"
BETAS = (0.0, 0.025, 0.1)
TASTE_DIM, SHARPNESS = 8, 6.0
LIGHT_INTERACTIONS, HEAVY_FACTOR = 4, 10
MIN_SIZE, MAX_SIZE, SIZE_THRESHOLD = 2, 8, 5
GROUP_TRAIN = 4
EMBED_DIM, BATCH, LR = 32, 64, 3e-3
K = 10
MIN_HR_GAIN = 0.01  # an HR@10 gain must also exceed this to count
MIN_RATIO_DROP = 0.05  # a drop of the dominance ratio must also exceed this


class World(NamedTuple):
    """Synthetic users, items and groups (ids are row indices)."""

    user_items: torch.Tensor  # (P, 2) long: (user, item) training interactions
    heavy: torch.Tensor  # (U,) bool
    members: torch.Tensor  # (G, MAX_SIZE) long, padded with -1, the heavy member first
    group_train: torch.Tensor  # (G * GROUP_TRAIN, 2) long: (group, item)
    group_test: torch.Tensor  # (G,) long: each group's held-out item
    group_seen: torch.Tensor  # (G, I) bool: items a group interacted with (train or test)
    n_users: int
    n_items: int


def _draw_items(tastes: torch.Tensor, items: torch.Tensor, count: int, g: torch.Generator) -> torch.Tensor:
    """(R, count) items per taste row, without replacement, from softmax(SHARPNESS <item, taste>)."""
    probs = torch.softmax(SHARPNESS * tastes @ items.T, dim=1)
    return torch.multinomial(probs, count, replacement=False, generator=g)


def _least_used(uses: torch.Tensor, count: int, g: torch.Generator) -> torch.Tensor:
    """``count`` distinct indices with the fewest ``uses`` so far (ties broken at random); their
    uses go up by one. Spreads users evenly over the groups."""
    chosen = torch.topk(-(uses + torch.rand(len(uses), generator=g)), count).indices
    uses[chosen] += 1
    return chosen


def make_world(n_light: int, n_heavy: int, n_items: int, n_groups: int, seed: int) -> World:
    """Users 0..n_heavy-1 are heavy. Every group has one heavy member (first) and 1..7 light
    ones, each user drawn among the least used so far: light users sit in about
    (light slots / n_light) groups each, heavy users in about n_groups / n_heavy."""
    g = torch.Generator().manual_seed(seed)
    n_users = n_light + n_heavy
    tastes = F.normalize(torch.randn(n_users, TASTE_DIM, generator=g), dim=1)
    items = F.normalize(torch.randn(n_items, TASTE_DIM, generator=g), dim=1)
    heavy = torch.arange(n_users) < n_heavy
    pairs = []
    for count, users in (
        (LIGHT_INTERACTIONS, torch.arange(n_heavy, n_users)),
        (LIGHT_INTERACTIONS * HEAVY_FACTOR, torch.arange(n_heavy)),
    ):
        chosen = _draw_items(tastes[users], items, count, g)
        pairs.append(torch.stack([users.repeat_interleave(count), chosen.reshape(-1)], dim=1))
    sizes = torch.randint(MIN_SIZE, MAX_SIZE + 1, (n_groups,), generator=g)
    members = torch.full((n_groups, MAX_SIZE), PAD)
    heavy_uses, light_uses = torch.zeros(n_heavy), torch.zeros(n_light)
    for row, size in enumerate(sizes.tolist()):
        members[row, 0] = _least_used(heavy_uses, 1, g)
        members[row, 1:size] = n_heavy + _least_used(light_uses, size - 1, g)
    member_tastes = tastes[members.clamp(min=0)] * (members >= 0)[..., None]
    group_tastes = F.normalize(member_tastes.sum(1), dim=1)  # every member counts equally
    chosen = _draw_items(group_tastes, items, GROUP_TRAIN + 1, g)
    seen = torch.zeros(n_groups, n_items, dtype=torch.bool).scatter_(1, chosen, True)
    groups = torch.arange(n_groups).repeat_interleave(GROUP_TRAIN)
    return World(
        user_items=torch.cat(pairs),
        heavy=heavy,
        members=members,
        group_train=torch.stack([groups, chosen[:, :GROUP_TRAIN].reshape(-1)], dim=1),
        group_test=chosen[:, GROUP_TRAIN],
        group_seen=seen,
        n_users=n_users,
        n_items=n_items,
    )


def user_histories(world: World) -> torch.Tensor:
    """(U + 1, max count) long: row u + 1 lists user u's training items, padded with n_items;
    row 0 (the padding member) is all padding."""
    counts = torch.bincount(world.user_items[:, 0], minlength=world.n_users)
    history = torch.full((world.n_users + 1, int(counts.max())), world.n_items)
    order = torch.argsort(world.user_items[:, 0], stable=True)
    users, items = world.user_items[order].unbind(1)
    slot = torch.arange(len(users)) - (torch.cumsum(counts, 0) - counts)[users]
    history[users + 1, slot] = items
    return history


class GroupRecommender(nn.Module):
    """C3's shared encoder: tokens [members; item] -> Transformer -> masked mean (see the docstring).

    A member's token is the sum of the embeddings of the items it chose (no id embedding), so
    its norm grows with its interaction count; the pre-LN Transformer carries it to the output."""

    def __init__(
        self, history: torch.Tensor, n_items: int, dim: int = EMBED_DIM, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.register_buffer("history", history)
        self.liked = nn.Embedding(n_items + 1, dim, padding_idx=n_items)  # the last row: padding
        self.items = nn.Embedding(n_items, dim)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        with torch.no_grad():
            for table in (self.liked, self.items):
                nn.init.xavier_uniform_(table.weight)
            self.liked.weight[n_items].zero_()

    def _tokens(self, member_ids, member_mask, item):
        """Transformer outputs (B, M + 1, D) of [members; item] and the (B, M + 1) token mask."""
        members = self.liked(self.history[member_ids + 1]).sum(-2)  # padding -1 -> row 0: zero
        tokens = torch.cat([members, self.items(item)[:, None]], dim=1)
        mask = torch.cat([member_mask, torch.ones_like(member_mask[:, :1])], dim=1)
        return self.transformer(self.dropout(tokens), src_key_padding_mask=~mask), mask

    def encode(self, member_ids: torch.Tensor, member_mask: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """(B, M) ids (padding -1 -> a zero row), (B, M) mask, (B,) items -> (B, D) masked mean."""
        out, mask = self._tokens(member_ids, member_mask, item)
        weights = mask[..., None].to(out.dtype)
        return (out * weights).sum(1) / weights.sum(1)

    def score(self, member_ids: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """(B,) raw scores of the items for the groups (B, M) (padding -1): the masked mean of
        the member outputs dotted with the item output."""
        out, mask = self._tokens(member_ids, member_ids != PAD, item)
        weights = mask[:, :-1, None].to(out.dtype)
        group = (out[:, :-1] * weights).sum(1) / weights.sum(1)
        return (group * out[:, -1]).sum(1) / self.items.embedding_dim**0.5


def _batches(n: int, g: torch.Generator):
    order = torch.randperm(n, generator=g)
    return order.split(BATCH)


def train(world: World, beta: float, epochs: int, seed: int) -> GroupRecommender:
    torch.manual_seed(seed)  # init and dropout
    model = GroupRecommender(user_histories(world), world.n_items)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(seed + 1)  # batches and negatives
    views = torch.Generator().manual_seed(seed + 2)  # group views (not drawn when beta = 0)
    model.train()
    for _ in range(epochs):
        for rows in _batches(len(world.user_items), g):
            users, pos = world.user_items[rows].unbind(1)
            neg = torch.randint(world.n_items, pos.shape, generator=g)
            _step(model, optimizer, users[:, None], pos, neg, 0.0, views)
        for rows in _batches(len(world.group_train), g):
            groups, pos = world.group_train[rows].unbind(1)
            neg = torch.randint(world.n_items, pos.shape, generator=g)
            _step(model, optimizer, world.members[groups], pos, neg, beta, views)
    return model.eval()


def _step(model, optimizer, members, pos, neg, beta, views) -> None:
    pos_scores, neg_scores = model.score(members.repeat(2, 1), torch.cat([pos, neg])).chunk(2)
    loss = mixed_recommendation_loss(pos_scores, neg_scores)
    if beta > 0 and members.shape[0] > 1:
        loss = loss + beta * group_view_nt_xent(
            model.encode, members, pos, 0.2, SIZE_THRESHOLD, 1.0, generator=views
        )
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def hit_and_ndcg(rank: torch.Tensor, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row HR@k and NDCG@k of the positive's 0-based rank (one relevant item)."""
    hit = (rank < k).double()
    return hit, hit / torch.log2(rank.double() + 2)


def drop_member(members: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """Each row without its member at ``column`` (B,), the rest shifted left, padded with -1."""
    keep = torch.ones_like(members, dtype=torch.bool)
    keep[torch.arange(members.shape[0]), column] = False
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    out = members.gather(1, order)
    out[:, -1] = PAD
    return out


@torch.no_grad()
def evaluate(model: GroupRecommender, world: World, n_negatives: int, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed + 3)
    n_groups = world.members.shape[0]
    # negatives: items the group never chose (weights 0 on its items)
    negatives = torch.multinomial((~world.group_seen).double(), n_negatives, generator=g)
    candidates = torch.cat([world.group_test[:, None], negatives], dim=1)  # the positive first
    per_group = candidates.shape[1]
    scores = torch.cat(
        [
            model.score(world.members[rows].repeat_interleave(per_group, 0), candidates[rows].reshape(-1))
            for rows in torch.arange(n_groups).split(256)
        ]
    ).view(n_groups, per_group)
    rank = (scores[:, 1:] > scores[:, :1]).sum(1)
    hit, ndcg = hit_and_ndcg(rank)
    sizes = (world.members != PAD).sum(1)
    large = sizes > SIZE_THRESHOLD
    # dominance: drop the heavy member (column 0) or one random light member (groups of >= 3)
    bigger = sizes >= 3
    members, item = world.members[bigger], world.group_test[bigger]
    light_column = 1 + (torch.rand(len(item), generator=g) * (sizes[bigger] - 1)).long()
    full = torch.sigmoid(model.score(members, item))
    heavy_change = (
        torch.sigmoid(model.score(drop_member(members, torch.zeros_like(item)), item)) - full
    ).abs()
    light_change = (torch.sigmoid(model.score(drop_member(members, light_column), item)) - full).abs()
    return {
        "hr_small": float(hit[~large].mean()),
        "ndcg_small": float(ndcg[~large].mean()),
        "hr_large": float(hit[large].mean()),
        "ndcg_large": float(ndcg[large].mean()),
        "drop_heavy": float(heavy_change.mean()),
        "drop_light": float(light_change.mean()),
        "ratio": float(heavy_change.mean() / light_change.mean()),
    }


COLUMNS = ("hr_small", "ndcg_small", "hr_large", "ndcg_large", "drop_heavy", "drop_light", "ratio")
HEADER = (
    "HR@10, 2-5 members ↑",
    "NDCG@10, 2-5 ↑",
    "HR@10, 6-8 members ↑",
    "NDCG@10, 6-8 ↑",
    "mean abs Δp+, heavy dropped",
    "mean abs Δp+, light dropped",
    "dominance ratio (1 = fair)",
)


def format_table(results: dict[float, list[dict[str, float]]]) -> str:
    lines = ["| β (NTX weight) | " + " | ".join(HEADER) + " |", "|---" * (len(HEADER) + 1) + "|"]
    for beta, runs in results.items():
        cells = [mean_std([r[c] for r in runs], 2 if c == "ratio" else 3) for c in COLUMNS]
        lines.append(f"| {beta:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def premise_holds(naive_ratios: list[float]) -> bool:
    """Whether the beta = 0 model is clearly dominated by the heavy member: its mean dominance
    ratio exceeds 1 by more than MIN_RATIO_DROP and, with several seeds, by more than 2 SE."""
    excess = statistics.fmean(naive_ratios) - 1
    if len(naive_ratios) < 2:
        return excess > MIN_RATIO_DROP
    se = (statistics.variance(naive_ratios) / len(naive_ratios)) ** 0.5
    return excess > max(MIN_RATIO_DROP, 2 * se)


def verdict(results: dict[float, list[dict[str, float]]]) -> str:
    """Decided on beta = 0.025 (the paper's default) against beta = 0; beta = 0.1 is reported.

    Premise absent (beta = 0 not dominated): could not be tested. Otherwise a clear drop of the
    dominance ratio and a clear large-group HR@10 gain (``clear_gain``): reproduced; one of
    them: partly reproduced; neither: did not reproduce."""

    def gain(better: float, worse: float, column: str, floor: float) -> tuple[float, bool]:
        sign = -1 if column == "ratio" else 1  # a lower dominance ratio is better
        a = [sign * r[column] for r in results[better]]
        b = [sign * r[column] for r in results[worse]]
        return clear_gain(a, b, floor)

    claim = "Claim (group views keep group embeddings from being dominated by heavy users)"
    naive_ratio = statistics.fmean(r["ratio"] for r in results[0.0])
    if not premise_holds([r["ratio"] for r in results[0.0]]):
        return (
            f"{claim} could not be tested: the β = 0 model is not dominated by the heavy user "
            f"(dominance ratio {naive_ratio:.2f}, not clearly above 1)."
        )
    ratio_drop, less_dominated = gain(0.025, 0.0, "ratio", MIN_RATIO_DROP)
    hr_gain, better_large = gain(0.025, 0.0, "hr_large", MIN_HR_GAIN)
    strong_ratio, _ = gain(0.1, 0.0, "ratio", MIN_RATIO_DROP)
    strong_hr, _ = gain(0.1, 0.0, "hr_large", MIN_HR_GAIN)
    outcome = ("did not reproduce", "partly reproduced", "reproduced")[less_dominated + better_large]
    return (
        f"The β = 0 model is dominated by the heavy user (dominance ratio {naive_ratio:.2f}). "
        f"β = 0.025 vs β = 0: dominance ratio {-ratio_drop:+.2f} "
        f"({'a drop beyond 2 SE and 0.05' if less_dominated else 'no clear drop'}), large-group HR@10 "
        f"{hr_gain:+.3f} ({'a gain beyond 2 SE and 0.01' if better_large else 'no clear gain'}); "
        f"β = 0.1 vs 0: ratio {-strong_ratio:+.2f}, large-group HR@10 {strong_hr:+.3f}. "
        f"{claim} {outcome}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per beta (3; 1 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (12; 1 with --quick)")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked block to rewrite")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = args.epochs or (1 if args.quick else 12)
    n_light, n_heavy, n_items, n_groups, n_negatives = (
        (200, 10, 100, 60, 20) if args.quick else (1600, 40, 100, 400, 50)
    )
    docs = args.docs if args.quick else (args.docs or DOCS)

    results: dict[float, list[dict[str, float]]] = {beta: [] for beta in BETAS}
    for seed in range(seeds):
        world = make_world(n_light, n_heavy, n_items, n_groups, seed)
        for beta in BETAS:
            t0 = time.time()
            model = train(world, beta, epochs, seed)
            metrics = evaluate(model, world, n_negatives, seed)
            results[beta].append(metrics)
            print_progress(start, f"beta {beta:g} seed {seed}", metrics, t0)

    table = format_table(results)
    summary = verdict(results)
    runtime = time.time() - start
    caption = (
        f"Synthetic groups ({'--quick' if args.quick else 'full run'}): {n_light} light users "
        f"({LIGHT_INTERACTIONS} interactions, about one group each) and {n_heavy} heavy users "
        f"({LIGHT_INTERACTIONS * HEAVY_FACTOR} interactions, about {n_groups // n_heavy} groups each), "
        f"{n_items} items, {n_groups} groups of 2-8 with one heavy member each; "
        f"{epochs} epochs of alternating user and group passes, {seeds} seed(s), mean ± std; "
        f"held-out item vs {n_negatives} negatives; run time {runtime:.0f}s on {args.threads} CPU thread(s)."
    )
    command = "python experiments/group_views.py" + (" --quick" if args.quick else "")
    publish_result(docs, BEGIN, END, caption=caption, table=table, summary=summary, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
