"""GatedFusionHead and gated_fusion_loss against a float64 loop reference of METHODS 3.4 / 1.11."""

from __future__ import annotations

import math

import pytest
import torch

from contrastkit.errors import InputError
from contrastkit.models.fusion import FusionOutput, GatedFusionHead, gated_fusion_loss

SMALL = {"in_dim": 6, "proj": (5, 4), "gate_hidden": 3, "cls_hidden": 3, "n_classes": 3}


def _head(seed: int = 0, dtype: torch.dtype = torch.float64, **options) -> GatedFusionHead:
    torch.manual_seed(seed)
    return GatedFusionHead(**{**SMALL, **options}).to(dtype).eval()


def _features(b: int, d: int, *, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, d, generator=g, dtype=dtype).requires_grad_()
    text = torch.randn(b, d, generator=g, dtype=dtype).requires_grad_()
    return image, text


# ---------------------------------------------------------------- loop reference


def _linear(layer: torch.nn.Linear, v: list[torch.Tensor]) -> list[torch.Tensor]:
    """W v + b, one output unit at a time, as a list of 0-d tensors."""
    w, b = layer.weight, layer.bias
    return [sum(w[j, k] * v[k] for k in range(len(v))) + b[j] for j in range(w.shape[0])]


def _relu(v: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.clamp(x, min=0) for x in v]


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-x))


def ref_forward(head: GatedFusionHead, image: torch.Tensor, text: torch.Tensor) -> list[dict]:
    """Per example: h_I, h_T (two Linear+ReLU layers each), g, logits, from the head's weights
    (eval mode: dropout is the identity)."""
    out = []
    for i in range(image.shape[0]):
        hs = []
        for mlp, v in ((head.image_head, image[i]), (head.text_head, text[i])):
            h = [v[k] for k in range(v.shape[0])]
            for layer in (mlp[0], mlp[3]):
                h = _relu(_linear(layer, h))
            hs.append(h)
        h_i, h_t = hs
        if head.gate is None:
            g = torch.tensor(head.fixed_gate, dtype=image.dtype)
        else:
            hidden = _relu(_linear(head.gate[0], h_i + h_t))  # [h_I; h_T]
            g = _sigmoid(_linear(head.gate[2], hidden)[0])
        fused = [g * a + (1 - g) * b for a, b in zip(h_i, h_t, strict=True)]
        logits = _linear(head.classifier[3], _relu(_linear(head.classifier[0], fused)))
        out.append({"h_image": h_i, "h_text": h_t, "gate": g, "logits": logits})
    return out


def ref_loss(rows: list[dict], labels: torch.Tensor, align_weight: float) -> torch.Tensor:
    """(1/B) sum_i [-l_i,y_i + log sum_c exp l_ic] + lambda (1/B) sum_i (1 - cos(h_I,i, h_T,i))."""
    ce, align = 0.0, 0.0
    for row, y in zip(rows, labels.tolist(), strict=True):
        logits = row["logits"]
        top = max(float(v.detach()) for v in logits)
        ce = ce - logits[y] + top + torch.log(sum(torch.exp(v - top) for v in logits))
        a, b = row["h_image"], row["h_text"]
        dot = sum(x * z for x, z in zip(a, b, strict=True))
        norm_a = torch.sqrt(sum(x * x for x in a))
        norm_b = torch.sqrt(sum(z * z for z in b))
        # an all-zero row has no cosine: it counts as cos = 0
        align = align + 1 - (dot / (norm_a * norm_b) if norm_a * norm_b > 0 else 0)
    n = len(rows)
    return ce / n + align_weight * align / n


def _stack(rows: list[dict], key: str) -> torch.Tensor:
    values = [row[key] for row in rows]
    return torch.stack(values) if key == "gate" else torch.stack([torch.stack(v) for v in values])


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("fixed_gate", [None, 0.5, 0.8])
def test_forward_matches_loop_reference_values_and_gradients(fixed_gate) -> None:
    head = _head(fixed_gate=fixed_gate)
    image, text = _features(5, 6, seed=1)
    out = head(image, text)
    rows = ref_forward(head, image, text)
    for key in ("logits", "gate", "h_image", "h_text"):
        torch.testing.assert_close(getattr(out, key), _stack(rows, key), rtol=1e-6, atol=1e-12)
    weights = torch.randn(out.logits.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    wrt = [image, text, *head.parameters()]
    got = torch.autograd.grad((out.logits * weights).sum(), wrt)
    want = torch.autograd.grad((_stack(rows, "logits") * weights).sum(), wrt)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12)


def test_shapes_and_gate_in_open_unit_interval() -> None:
    torch.manual_seed(0)
    head = GatedFusionHead().eval()
    image, text = _features(7, 512, seed=3, dtype=torch.float32)
    out = head(image, text)
    assert isinstance(out, FusionOutput)
    assert out.logits.shape == (7, 2) and out.gate.shape == (7,)
    assert out.h_image.shape == (7, 128) and out.h_text.shape == (7, 128)
    assert bool(((out.gate > 0) & (out.gate < 1)).all())


def test_gate_varies_per_example() -> None:
    head = _head()
    image, text = _features(6, 6, seed=4)
    gate = head(image, text).gate.detach()
    assert float(gate.max() - gate.min()) > 0


def test_fixed_gate_has_no_gate_layers_and_a_constant_gate() -> None:
    head = _head(fixed_gate=0.5)
    assert head.gate is None
    assert not any("gate" in name for name, _ in head.named_parameters())
    image, text = _features(4, 6, seed=5)
    out = head(image, text)
    torch.testing.assert_close(out.gate, torch.full((4,), 0.5, dtype=torch.float64))
    fused = 0.5 * out.h_image + 0.5 * out.h_text
    torch.testing.assert_close(out.logits, head.classifier(fused))


def test_gate_one_ignores_the_text() -> None:
    head = _head(fixed_gate=1.0)
    image, text = _features(4, 6, seed=6)
    other_text = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(head(image, text).logits, head(image, other_text).logits)


def _parameter_count(in_dim, proj, gate_hidden, cls_hidden, n_classes, fixed) -> int:
    def linear(a: int, b: int) -> int:
        return a * b + b

    widths = (in_dim, *proj)
    heads = 2 * sum(linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
    gate = 0 if fixed else linear(2 * proj[-1], gate_hidden) + linear(gate_hidden, 1)
    return heads + gate + linear(proj[-1], cls_hidden) + linear(cls_hidden, n_classes)


@pytest.mark.parametrize("fixed_gate", [None, 0.5])
def test_parameter_count_is_about_350k(fixed_gate) -> None:
    head = GatedFusionHead(fixed_gate=fixed_gate)
    count = sum(p.numel() for p in head.parameters())
    assert count == _parameter_count(512, (256, 128), 64, 64, 2, fixed_gate is not None)
    assert 330_000 < count < 360_000  # the paper's "about 350K trainable parameters"


def test_forward_gradcheck_float64() -> None:
    head = _head()
    image, text = _features(3, 6, seed=7)
    assert torch.autograd.gradcheck(lambda a, b: head(a, b).logits, (image, text))
    assert torch.autograd.gradcheck(lambda a, b: head(a, b).gate, (image, text))


def test_float32_agrees_with_float64() -> None:
    head64 = _head(seed=3)
    head32 = _head(seed=3, dtype=torch.float32)
    image, text = _features(8, 6, seed=8)
    out64, out32 = head64(image, text), head32(image.float(), text.float())
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    torch.testing.assert_close(out32.logits.double(), out64.logits, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out32.gate.double(), out64.gate, rtol=1e-4, atol=1e-6)
    loss64, loss32 = gated_fusion_loss(out64, labels), gated_fusion_loss(out32, labels)
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-4, atol=0)


def test_bfloat16_inputs_and_weights_give_finite_results() -> None:
    image, text = _features(8, 6, seed=9, dtype=torch.bfloat16)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for head in (_head(dtype=torch.float32), _head(dtype=torch.bfloat16)):
        out = head(image, text)
        loss = gated_fusion_loss(out, labels)
        assert loss.dtype == torch.float32 and bool(torch.isfinite(loss))
        assert bool(torch.isfinite(out.logits.float()).all())
        loss.backward()
        assert all(bool(torch.isfinite(p.grad.float()).all()) for p in head.parameters())


def test_dropout_acts_only_in_train_mode() -> None:
    torch.manual_seed(0)
    head = GatedFusionHead(**{**SMALL, "proj": (32, 32), "cls_hidden": 16})
    image, text = _features(4, 6, seed=10, dtype=torch.float32)
    head.train()
    torch.manual_seed(1)
    first = head(image, text).logits
    torch.manual_seed(2)
    second = head(image, text).logits
    assert not torch.allclose(first, second)
    head.eval()
    torch.manual_seed(1)
    first = head(image, text).logits
    torch.manual_seed(2)
    torch.testing.assert_close(head(image, text).logits, first, rtol=0, atol=0)
    # without dropout, train mode is the eval-mode function
    torch.manual_seed(0)
    plain = GatedFusionHead(**{**SMALL, "p_proj": 0.0, "p_cls": 0.0})
    torch.testing.assert_close(plain.train()(image, text).logits, plain.eval()(image, text).logits)


# ---------------------------------------------------------------- loss


@pytest.mark.parametrize("align_weight", [0.0, 0.01, 0.1, 2.5])
def test_loss_matches_manual_ce_plus_cosine_term(align_weight) -> None:
    head = _head(seed=4)
    image, text = _features(6, 6, seed=11)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    got = gated_fusion_loss(head(image, text), labels, align_weight)
    want = ref_loss(ref_forward(head, image, text), labels, align_weight)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    wrt = [image, text, *head.parameters()]
    for g, w in zip(torch.autograd.grad(got, wrt), torch.autograd.grad(want, wrt), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12)


def test_loss_gradcheck_float64() -> None:
    head = _head(seed=5)
    image, text = _features(4, 6, seed=12)
    labels = torch.tensor([0, 1, 2, 1])
    assert torch.autograd.gradcheck(lambda a, b: gated_fusion_loss(head(a, b), labels, 0.1), (image, text))


def test_alignment_gradient_reaches_both_heads_and_not_the_classifier() -> None:
    head = _head(seed=6)
    image, text = _features(5, 6, seed=13)
    labels = torch.tensor([0, 1, 2, 1, 0])
    out = head(image, text)
    align_only = gated_fusion_loss(out, labels, 1.0) - gated_fusion_loss(out, labels, 0.0)
    grads = dict(
        zip(
            [n for n, _ in head.named_parameters()],
            torch.autograd.grad(align_only, list(head.parameters()), allow_unused=True),
            strict=True,
        )
    )
    for prefix in ("image_head.", "text_head."):
        assert any(
            g is not None and float(g.abs().max()) > 1e-8 for n, g in grads.items() if n.startswith(prefix)
        )
    for name, g in grads.items():
        if name.startswith(("classifier.", "gate.")):
            assert g is None or float(g.abs().max()) < 1e-12


def test_loss_of_a_perfect_alignment_is_the_cross_entropy() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.25]], dtype=torch.float64)
    h = torch.tensor([[1.0, 2.0], [3.0, 0.5]], dtype=torch.float64)
    out = FusionOutput(logits, torch.full((2,), 0.5), h, 3 * h)
    labels = torch.tensor([0, 1])
    ce = (
        -(2.0 - math.log(math.exp(2.0) + math.exp(-1.0))) - (0.25 - math.log(math.exp(0.5) + math.exp(0.25)))
    ) / 2
    torch.testing.assert_close(gated_fusion_loss(out, labels, 0.5), torch.tensor(ce, dtype=torch.float64))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"in_dim": 0}, "in_dim"),
        ({"proj": ()}, "proj"),
        ({"proj": (4, 0)}, "proj"),
        ({"gate_hidden": 0}, "gate_hidden"),
        ({"cls_hidden": 2.5}, "cls_hidden"),
        ({"n_classes": 1}, "n_classes"),
        ({"p_proj": 1.0}, "p_proj"),
        ({"p_cls": -0.1}, "p_cls"),
        ({"fixed_gate": 1.5}, "fixed_gate"),
        ({"fixed_gate": "half"}, "fixed_gate"),
    ],
)
def test_bad_options_raise(options, argument) -> None:
    with pytest.raises(InputError, match=f"GatedFusionHead: argument '{argument}'"):
        GatedFusionHead(**{**SMALL, **options})


@pytest.mark.parametrize(
    ("image", "text", "pattern"),
    [
        (torch.randn(3, 5), torch.randn(3, 6), "'image' must have embedding size 6 \\(from 'in_dim'\\)"),
        (torch.randn(3, 6), torch.randn(3, 7), "'text' must have embedding size 6"),
        (torch.randn(6), torch.randn(3, 6), "'image' must have shape \\(B, in_dim\\)"),
        (torch.randn(3, 6), torch.randn(2, 6), "same B rows"),
        (torch.randn(0, 6), torch.randn(0, 6), "'image' is empty"),
        (torch.full((2, 6), float("nan")), torch.randn(2, 6), "'image' contains 12 NaN/inf"),
        (torch.randn(2, 6), torch.tensor([[float("inf")] * 6] * 2), "'text' contains"),
        (torch.ones(2, 6, dtype=torch.long), torch.randn(2, 6), "'image' must be a floating-point"),
        ([[0.0] * 6], torch.randn(1, 6), "'image' must be a torch.Tensor"),
    ],
)
def test_bad_inputs_raise(image, text, pattern) -> None:
    head = _head(dtype=torch.float32)
    with pytest.raises(InputError, match=f"GatedFusionHead.forward: .*{pattern}"):
        head(image, text)


def test_bad_loss_arguments_raise() -> None:
    head = _head()
    image, text = _features(3, 6, seed=14)
    out = head(image, text)
    cases = [
        ((out, torch.tensor([0, 1])), "'labels' must have shape \\(3,\\)"),
        ((out, torch.tensor([0.0, 1.0, 2.0])), "'labels' must be an integer"),
        ((out, torch.tensor([0, 1, 3])), "class ids in \\[0, 3\\)"),
        ((out, torch.tensor([0, -1, 2])), "class ids in \\[0, 3\\)"),
        ((out, torch.tensor([0, 1, 2]), -0.1), "'align_weight' must be finite and >= 0"),
        ((out, torch.tensor([0, 1, 2]), float("nan")), "'align_weight'"),
        ((tuple(out), torch.tensor([0, 1, 2])), "'output' must be the FusionOutput"),
    ]
    for args, pattern in cases:
        with pytest.raises(InputError, match=f"gated_fusion_loss: .*{pattern}"):
            gated_fusion_loss(*args)


def test_an_all_zero_head_row_counts_as_cosine_zero() -> None:
    h_image = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 2.0]], dtype=torch.float64, requires_grad=True)
    h_text = torch.tensor([[1.0, 1.0], [1.0, 3.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    out = FusionOutput(torch.zeros(3, 2, dtype=torch.float64), torch.full((3,), 0.5), h_image, h_text)
    labels = torch.tensor([0, 1, 1])
    align = gated_fusion_loss(out, labels, 1.0) - gated_fusion_loss(out, labels, 0.0)
    torch.testing.assert_close(align, torch.tensor((1 - 2**-0.5 + 1 + 1) / 3, dtype=torch.float64))
    grad_image, grad_text = torch.autograd.grad(align, (h_image, h_text))
    assert bool((grad_image[1:] == 0).all()) and bool((grad_text[1:] == 0).all())
    assert bool(torch.isfinite(grad_image).all()) and float(grad_image[0].abs().max()) > 0
    zero = FusionOutput(out.logits, out.gate, torch.zeros(3, 2), torch.zeros(3, 2))
    torch.testing.assert_close(
        gated_fusion_loss(zero, labels, 0.1), torch.tensor(math.log(2) + 0.1, dtype=torch.float64)
    )
