"""Losses against hand-computed values on tiny tensors (float64 so the numbers are exact)."""

from math import log
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segkit.losses import (
    CEDetailLoss,
    CEDiceDetailLoss,
    CEDiceLoss,
    CELovaszDetailLoss,
    CELovaszLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    OhemDetailLoss,
    resize_to_target,
)

LN2 = log(2.0)
CONF_LOSS = Path(__file__).resolve().parents[2] / "conf" / "loss"
ALL_LOSSES = [
    CrossEntropyLoss,
    FocalLoss,
    DiceLoss,
    CEDiceLoss,
    OhemCrossEntropyLoss,
    LovaszSoftmaxLoss,
    CELovaszLoss,
    CEDetailLoss,
    OhemDetailLoss,
    CELovaszDetailLoss,
    CEDiceDetailLoss,
]


def three_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (1,2,1,3) and target (1,1,3).

    pixel A: logits [0, 0],    label 0   -> p = (1/2, 1/2), CE = ln 2
    pixel B: logits [ln 3, 0], label 1   -> p = (3/4, 1/4), CE = ln 4
    pixel C: logits [5, -5],   label 255 (ignored; would be a large loss if counted)
    """
    logits = torch.tensor([[[[0.0, log(3.0), 5.0]], [[0.0, 0.0, -5.0]]]], dtype=torch.float64)
    target = torch.tensor([[[0, 1, 255]]])
    return logits, target


def notes_focal_loss(inputs, target, cls_weights, ignore_index, alpha=0.5, gamma=2):
    """The notes' Focal_Loss (mean over ALL pixels), ignore index made a parameter."""
    n, c, h, w = inputs.size()
    temp_inputs = inputs.transpose(1, 2).transpose(2, 3).contiguous().view(-1, c)
    temp_target = target.view(-1)
    logpt = -nn.CrossEntropyLoss(weight=cls_weights, ignore_index=ignore_index, reduction="none")(
        temp_inputs, temp_target
    )
    pt = torch.exp(logpt)
    if alpha is not None:
        logpt *= alpha
    loss = -((1 - pt) ** gamma) * logpt
    return loss.mean()


# ---------------------------------------------------------------- cross-entropy


def test_ce_hand_value_with_and_without_class_weights():
    logits, target = three_pixels()
    assert CrossEntropyLoss()(logits, target).item() == pytest.approx((LN2 + 2 * LN2) / 2)
    # weighted mean: (1 * ln2 + 3 * ln4) / (1 + 3), torch divides by the sum of the weights
    weighted = CrossEntropyLoss(class_weights=[1.0, 3.0])(logits, target)
    assert weighted.item() == pytest.approx(7 * LN2 / 4)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_matches_torch_weighted_mean(smoothing):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[0, :2] = 255
    weights = [0.5, 1.0, 2.0, 3.0]
    ours = CrossEntropyLoss(class_weights=weights, label_smoothing=smoothing)(logits, target)
    ref = nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float64),
        ignore_index=255,
        label_smoothing=smoothing,
    )(logits, target)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)


def test_ce_class_weights_are_a_buffer_and_length_is_checked():
    loss = CrossEntropyLoss(class_weights=[1.0, 2.0, 3.0])
    assert "class_weights" in dict(loss.named_buffers())
    assert loss.to(torch.float64).class_weights.dtype == torch.float64  # moves with .to()
    assert "class_weights" not in loss.state_dict()  # derived from config, not a checkpoint item
    logits, target = three_pixels()
    with pytest.raises(ValueError, match="loss.class_weights has 3 entries"):
        loss(logits, target)
    with pytest.raises(ValueError, match="auto"):
        CrossEntropyLoss(class_weights="auto")


def test_all_ignored_batch_gives_zero_not_nan():
    logits, _ = three_pixels()
    target = torch.full((1, 1, 3), 255)
    for cls in ALL_LOSSES:
        x = logits.clone().requires_grad_()
        value = cls()(x, target)
        value.backward()
        assert value.item() == 0.0, cls.__name__
        assert torch.equal(x.grad, torch.zeros_like(x)), cls.__name__


# ---------------------------------------------------------------- focal


def test_focal_hand_value_valid_pixels_only():
    logits, target = three_pixels()
    # A: pt = 1/2 -> (1/2)^2 * 0.5 * ln2 = 0.125 ln2 ; B: pt = 1/4 -> (3/4)^2 * 0.5 * ln4
    expected = (0.125 * LN2 + 0.5625 * 0.5 * 2 * LN2) / 2
    assert FocalLoss(alpha=0.5, gamma=2.0)(logits, target).item() == pytest.approx(expected)
    # alpha None -> 1, gamma 0 -> plain CE mean
    assert FocalLoss(alpha=None, gamma=0.0)(logits, target).item() == pytest.approx(1.5 * LN2)


def test_focal_weighted_uses_pt_of_weighted_ce_as_in_notes():
    logits, target = three_pixels()
    # weights [1, 3]: A logpt = -ln2, pt = 1/2; B logpt = -3 ln4, pt = 4^-3 = 1/64
    a = 0.25 * 0.5 * LN2
    b = (63 / 64) ** 2 * 0.5 * 3 * 2 * LN2
    got = FocalLoss(class_weights=[1.0, 3.0])(logits, target).item()
    assert got == pytest.approx((a + b) / 2)


def test_focal_equals_notes_formula_rescaled_to_valid_pixels():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    target[:, 0] = 255
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    n_valid = int((target != 255).sum())
    notes = notes_focal_loss(logits, target, weights, ignore_index=255) * target.numel() / n_valid
    ours = FocalLoss(class_weights=weights.tolist())(logits, target)
    assert ours.item() == pytest.approx(notes.item(), rel=1e-12)


def test_focal_ignored_pixels_do_not_dilute_the_mean():
    logits, _ = three_pixels()
    logits = logits.repeat(1, 1, 2, 1)  # (1,2,2,3): 6 pixels
    target = torch.full((1, 2, 3), 255)
    target[0, 0, 1] = 1  # only pixel B valid: pt = 1/4
    expected = 0.5625 * 0.5 * 2 * LN2
    assert FocalLoss()(logits, target).item() == pytest.approx(expected)


def test_focal_gamma_below_one_has_finite_gradients_with_ignore():
    logits, target = three_pixels()
    x = logits.clone().requires_grad_()
    FocalLoss(gamma=0.5)(x, target).backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[..., 2], torch.zeros(1, 2, 1, dtype=torch.float64))


# ---------------------------------------------------------------- dice


def test_dice_hand_value():
    logits, target = three_pixels()
    # class 0: inter 1/2, sum p 5/4, sum g 1 -> (1 + 1) / (9/4 + 1) = 8/13
    # class 1: inter 1/4, sum p 3/4, sum g 1 -> (1/2 + 1) / (7/4 + 1) = 6/11
    expected = 1 - (8 / 13 + 6 / 11) / 2  # = 60/143; the ignored pixel C is excluded
    assert DiceLoss(smooth=1.0)(logits, target).item() == pytest.approx(expected)
    assert expected == pytest.approx(60 / 143)
    weighted = DiceLoss(class_weights=[1.0, 3.0])(logits, target).item()
    assert weighted == pytest.approx((1 * (1 - 8 / 13) + 3 * (1 - 6 / 11)) / 4)


def test_dice_absent_class_counts_with_zero_loss_when_not_predicted():
    logits, target = three_pixels()
    never = torch.full((1, 1, 1, 3), -200.0, dtype=torch.float64)  # p(class 2) ~ 1e-87
    three_cls = torch.cat([logits, never], dim=1)
    # class 2 absent from labels and predictions: dice_2 = 1/(0 + 0 + 1) = 1 -> term 0
    expected = ((1 - 8 / 13) + (1 - 6 / 11) + 0.0) / 3
    assert DiceLoss()(three_cls, target).item() == pytest.approx(expected)
    # hallucinated: p(class 2) = 1/3 at A and B -> dice_2 = 1/(2/3 + 1) -> term 1 - 3/5
    x = torch.zeros(1, 3, 1, 3, dtype=torch.float64)
    per_class = DiceLoss().per_class_dice(x, target)
    assert per_class[2].item() == pytest.approx(3 / 5)


# ---------------------------------------------------------------- CE + Dice


def test_ce_dice_is_weighted_sum():
    logits, target = three_pixels()
    assert CEDiceLoss()(logits, target).item() == pytest.approx(1.5 * LN2 + 60 / 143)
    got = CEDiceLoss(ce_weight=2.0, dice_weight=0.5)(logits, target).item()
    assert got == pytest.approx(3 * LN2 + 30 / 143)


# ---------------------------------------------------------------- OHEM


def ohem_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (1,2,1,5), all labelled 0 except the last (ignored, and the hardest if counted).

    p(true) = 0.9, 0.75, 0.5, 0.25 -> CE = ln(10/9), ln(4/3), ln 2, ln 4.
    """
    a = torch.tensor([log(9.0), log(3.0), 0.0, -log(3.0), -5.0], dtype=torch.float64)
    logits = torch.stack([a, torch.zeros_like(a)]).view(1, 2, 1, 5)
    target = torch.tensor([[[0, 0, 0, 0, 255]]])
    return logits, target


CE4 = [log(10 / 9), log(4 / 3), LN2, 2 * LN2]


@pytest.mark.parametrize(
    "thresh, min_kept, kept",
    [
        (0.7, 0, [2, 3]),  # threshold only: p = 0.5, 0.25
        (0.7, 1, [2, 3]),  # the hardest pixel is already kept
        (0.7, 3, [1, 2, 3]),  # min_kept adds the next hardest (p = 0.75)
        (0.3, 1, [3]),
        (0.3, 2, [2, 3]),
        (0.7, 100, [0, 1, 2, 3]),  # more than the valid count: every valid pixel, not the ignored
    ],
)
def test_ohem_hand_cases(thresh, min_kept, kept):
    logits, target = ohem_pixels()
    got = OhemCrossEntropyLoss(thresh=thresh, min_kept=min_kept)(logits, target).item()
    assert got == pytest.approx(sum(CE4[i] for i in kept) / len(kept))


def test_ohem_keeping_everything_equals_weighted_ce_and_works_on_aux():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    target[1, 1:] = 255
    weights = [1.0, 2.0, 0.5]
    ohem = OhemCrossEntropyLoss(thresh=0.7, min_kept=10**6, class_weights=weights)
    ce = CrossEntropyLoss(class_weights=weights)
    assert ohem(logits, target).item() == pytest.approx(ce(logits, target).item(), rel=1e-12)
    small, _ = ohem_pixels()
    outputs = {"out": small, "aux": [small.clone()]}
    loss = OhemCrossEntropyLoss(thresh=0.7, min_kept=0, aux_weights=0.4)
    assert loss(outputs, ohem_pixels()[1]).item() == pytest.approx(1.4 * 1.5 * LN2)


# ---------------------------------------------------------------- lovasz-softmax


def probs_to_logits(p_class1: list[float]) -> torch.Tensor:
    """(1, 2, 1, P) float64 logits whose softmax is exactly (1 - p, p) per pixel."""
    p = torch.tensor(p_class1, dtype=torch.float64)
    return torch.stack([(1 - p).log(), p.log()]).reshape(1, 2, 1, -1)


def lovasz_by_definition(probs: torch.Tensor, labels: torch.Tensor, cls: int) -> float:
    """Lovasz extension from its definition, for (P, C) probs and (P,) labels (valid pixels):
    sum_i e_(i) * (D(S_i) - D(S_(i-1))), errors e sorted decreasing, S_i the first i pixels,
    D(S) = |S| / |fg u S| the Jaccard loss when exactly S is mispredicted."""
    fg = {i for i in range(len(labels)) if labels[i] == cls}
    errors = [abs(float(i in fg) - probs[i, cls].item()) for i in range(len(labels))]
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    total, previous, chosen = 0.0, 0.0, set()
    for i in order:
        chosen.add(i)
        jaccard = len(chosen) / len(fg | chosen)
        total += errors[i] * (jaccard - previous)
        previous = jaccard
    return total


def test_lovasz_hand_value_one_image_two_classes_four_pixels():
    # p(class 1) = 0.9, 0.6, 0.3, 0.2; labels 1, 0, 1, 0. Errors are 0.1, 0.6, 0.7, 0.2 for
    # both classes. Class 1 (fg = {0, 2}), sorted pixels 2, 1, 3, 0: D = 1/2, 2/3, 3/4, 4/4,
    # increments 1/2, 1/6, 1/12, 1/4 -> 0.7/2 + 0.6/6 + 0.2/12 + 0.1/4 = 0.491666...
    # Class 0 (fg = {1, 3}), same order: D = 1/3, 2/3, 3/3, 4/4 -> (0.7 + 0.6 + 0.2)/3 = 0.5.
    logits = probs_to_logits([0.9, 0.6, 0.3, 0.2])
    target = torch.tensor([[[1, 0, 1, 0]]])
    class1 = 0.7 / 2 + 0.6 / 6 + 0.2 / 12 + 0.1 / 4
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx((class1 + 0.5) / 2)
    weighted = LovaszSoftmaxLoss(class_weights=[1.0, 3.0])(logits, target).item()
    assert weighted == pytest.approx((0.5 + 3 * class1) / 4)
    # an ignored pixel drops out: pixel 3 ignored -> class 1 errors 0.7, 0.6, 0.1:
    # D = 1/2, 2/3, 3/3 -> 0.7/2 + 0.6/6 + 0.1/3 ; class 0 (fg = {1}): D = 1/2, 2/2, 3/3
    # -> 0.7/2 + 0.6/2
    target[..., 3] = 255
    expected = ((0.7 / 2 + 0.6 / 6 + 0.1 / 3) + (0.7 / 2 + 0.6 / 2)) / 2
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx(expected)


def test_lovasz_of_hard_predictions_is_one_minus_iou():
    # labels 0 0 1 1 1 ignore; predictions 0 1 1 1 0 0 (confident, so errors are 0 or 1):
    # IoU_0 = |{0}| / |{0, 1, 4}| = 1/3, IoU_1 = |{2, 3}| / |{1, 2, 3, 4}| = 1/2
    target = torch.tensor([[[0, 0, 1, 1, 1, 255]]])
    pred = torch.tensor([0, 1, 1, 1, 0, 0])
    logits = (F.one_hot(pred, 2).T.reshape(1, 2, 1, 6).double() * 2 - 1) * 50
    expected = ((1 - 1 / 3) + (1 - 1 / 2)) / 2
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx(expected, abs=1e-12)


def test_lovasz_all_classes_present_classes_and_per_image_by_definition():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 2, 3, dtype=torch.float64, generator=g)
    target = torch.tensor([[[0, 0, 1], [1, 255, 0]], [[1, 1, 1], [0, 0, 255]]])  # no class 2
    probs = logits.softmax(1)

    def by_definition(images: list[int], classes: list[int]) -> float:
        p = torch.cat([probs[i].permute(1, 2, 0).reshape(-1, 3) for i in images])
        y = torch.cat([target[i].reshape(-1) for i in images])
        keep = y != 255
        return sum(lovasz_by_definition(p[keep], y[keep], c) for c in classes) / len(classes)

    batch = LovaszSoftmaxLoss()(logits, target).item()
    assert batch == pytest.approx(by_definition([0, 1], [0, 1]))
    per_image = LovaszSoftmaxLoss(per_image=True)(logits, target).item()
    assert per_image == pytest.approx((by_definition([0], [0, 1]) + by_definition([1], [0, 1])) / 2)
    every = LovaszSoftmaxLoss(classes="all")(logits, target).item()
    assert every == pytest.approx(by_definition([0, 1], [0, 1, 2]))
    # an absent class costs its largest predicted probability over the valid pixels
    absent = probs[:, 2][target != 255].max().item()
    assert every == pytest.approx((by_definition([0, 1], [0, 1]) * 2 + absent) / 3)
    with pytest.raises(ValueError, match="loss.classes"):
        LovaszSoftmaxLoss(classes="some")


def test_lovasz_all_classes_on_an_all_ignored_image_is_zero():
    # classes="all" counts absent classes; an image without valid pixels must still give 0
    logits = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[0, 1], [2, 2]], [[255, 255], [255, 255]]])
    loss = LovaszSoftmaxLoss(classes="all", per_image=True)
    value = loss(logits, target)
    alone = LovaszSoftmaxLoss(classes="all")(logits[:1], target[:1])
    assert value.item() == pytest.approx(alone.item() / 2)  # mean over 2 images, 2nd is 0
    value.backward()
    assert torch.equal(logits.grad[1], torch.zeros_like(logits.grad[1]))


def test_lovasz_is_differentiable_gradcheck():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (2, 3, 4), generator=g)
    target[0, 0, :2] = 255
    for loss in (LovaszSoftmaxLoss(), LovaszSoftmaxLoss(per_image=True), CELovaszLoss()):
        assert torch.autograd.gradcheck(lambda x, f=loss: f(x, target), (logits,))
    # a perfect, confident prediction costs nothing
    perfect = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).double() * 60
    assert LovaszSoftmaxLoss()(perfect, target).item() == pytest.approx(0.0, abs=1e-12)


def test_ce_lovasz_is_weighted_sum():
    logits, target = three_pixels()
    ce = CrossEntropyLoss()(logits, target).item()
    lovasz = LovaszSoftmaxLoss(per_image=True)(logits, target).item()
    combo = CELovaszLoss(ce_weight=0.5, lovasz_weight=2.0, per_image=True)(logits, target)
    assert combo.item() == pytest.approx(0.5 * ce + 2.0 * lovasz)


def test_lovasz_max_pixels_ranks_the_drawn_pixels_only():
    """With ``max_pixels`` the loss is the Lovasz term of the pixels torch.randperm draws (one
    batch ranking: indices over all N*H*W pixels; per image: the same positions in each image),
    those pixels alone get a gradient, and a limit >= the pixel count changes nothing."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randint(0, 4, (3, 5, 6), generator=g)
    target[0, 0] = 255
    for per_image, pixels in ((False, 90), (True, 30)):
        batches = 3 if per_image else 1
        torch.manual_seed(11)
        value = LovaszSoftmaxLoss(per_image=per_image, max_pixels=7)(logits, target)
        torch.manual_seed(11)
        keep = torch.randperm(pixels)[:7]
        scores = logits.permute(0, 2, 3, 1).reshape(batches, pixels, 4)[:, keep]
        labels = target.reshape(batches, pixels)[:, keep]
        as_images = scores.reshape(batches, 7, 1, 4).permute(0, 3, 1, 2)  # (B, C, 7, 1)
        expected = LovaszSoftmaxLoss(per_image=per_image)(as_images, labels.reshape(batches, 7, 1))
        assert value.item() == pytest.approx(expected.item(), abs=1e-12)
        (grad,) = torch.autograd.grad(value, logits)
        touched = grad.abs().sum(1).reshape(batches, pixels) > 0
        assert set(touched.nonzero()[:, 1].tolist()) <= set(keep.tolist())
        full = LovaszSoftmaxLoss(per_image=per_image)(logits, target).item()
        limit = LovaszSoftmaxLoss(per_image=per_image, max_pixels=pixels)
        assert limit(logits, target).item() == pytest.approx(full, abs=1e-12)
    for bad in (0, -5, True):
        with pytest.raises(ValueError, match="loss.max_pixels"):
            LovaszSoftmaxLoss(max_pixels=bad)


def test_lovasz_max_pixels_estimates_the_full_loss():
    # 20 000 drawn pixels of 8 x 120 x 160 (of which 1 % are a thin class): within 3 % of the
    # loss of all 153 600 pixels
    g = torch.Generator().manual_seed(5)
    target = torch.randint(0, 3, (8, 120, 160), generator=g)
    target[:, :, 80:82] = 3
    logits = torch.randn(8, 4, 120, 160, generator=g) + 2 * F.one_hot(target, 4).permute(0, 3, 1, 2)
    full = LovaszSoftmaxLoss()(logits, target).item()
    torch.manual_seed(0)
    sampled = [LovaszSoftmaxLoss(max_pixels=20000)(logits, target).item() for _ in range(3)]
    assert all(v == pytest.approx(full, rel=0.03) for v in sampled)
    assert len(set(sampled)) == 3  # a new draw per call


@pytest.mark.parametrize(
    "plain_cls, guided_cls, term_weight",
    [
        (CELovaszLoss, CELovaszDetailLoss, "lovasz_weight"),
        (CEDiceLoss, CEDiceDetailLoss, "dice_weight"),
    ],
)
def test_detail_guided_loss_is_the_plain_loss_plus_the_detail_term(
    plain_cls, guided_cls, term_weight
):
    from segkit.losses.detail import DetailLoss

    g = torch.Generator().manual_seed(2)
    out = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=g)
    aux = [torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g)]
    detail = torch.randn(2, 1, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[0, :2] = 255
    args = {"ce_weight": 0.5, term_weight: 2.0, "class_weights": [1.0, 2.0, 0.5]}
    plain = plain_cls(aux_weights=0.3, **args)({"out": out, "aux": aux}, target).item()
    guided = guided_cls(detail_weight=0.7, aux_weights=0.3, **args)
    value = guided({"out": out, "aux": aux, "detail": detail}, target).item()
    assert value == pytest.approx(plain + 0.7 * DetailLoss()(detail, target).item(), rel=1e-6)
    assert guided({"out": out, "aux": aux}, target).item() == pytest.approx(plain)  # eval mode


# ---------------------------------------------------------------- output dict, resize, labels


def test_aux_weights_list_float_and_eval_mode():
    logits, target = three_pixels()
    zeros_same = torch.zeros(1, 2, 1, 3, dtype=torch.float64)  # CE = ln2 per pixel
    zeros_small = torch.zeros(1, 2, 1, 1, dtype=torch.float64)  # resized -> still ln2
    outputs = {"out": logits, "aux": [zeros_same, zeros_small]}
    got = CrossEntropyLoss(aux_weights=[0.4, 0.2])(outputs, target).item()
    assert got == pytest.approx(1.5 * LN2 + 0.4 * LN2 + 0.2 * LN2)
    assert CrossEntropyLoss(aux_weights=0.5)(outputs, target).item() == pytest.approx(2.5 * LN2)
    # eval mode: no aux heads, the list is not used
    eval_value = CrossEntropyLoss(aux_weights=[0.4, 0.2])({"out": logits}, target).item()
    assert eval_value == pytest.approx(1.5 * LN2)


def test_aux_weights_length_mismatch_names_the_key():
    logits, target = three_pixels()
    outputs = {"out": logits, "aux": [logits, logits]}
    with pytest.raises(ValueError, match=r"loss\.aux_weights has 3 entries.*2 aux heads"):
        CrossEntropyLoss(aux_weights=[0.4, 0.4, 0.4])(outputs, target)
    with pytest.raises(ValueError, match="loss.aux_weights"):
        CrossEntropyLoss(aux_weights="0.4")
    with pytest.raises(ValueError, match="'out'"):
        CrossEntropyLoss()({"logits": logits}, target)


def test_resize_when_only_one_dimension_differs():
    logits, _ = three_pixels()
    logits = logits[..., :2]  # (1,2,1,2): pixels A, B
    target = torch.tensor([[[0, 1], [0, 1], [0, 1]]])  # (1,3,2): only the height differs
    # height 1 -> 3 bilinear copies the single row, so every row is (A, B)
    assert CrossEntropyLoss()(logits, target).item() == pytest.approx(1.5 * LN2)
    assert resize_to_target(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 5)).shape == (1, 2, 2, 5)
    # low-precision logits are resized in float32 (the losses compute in float32)
    small = torch.randn(1, 2, 2, 3).bfloat16()
    resized = resize_to_target(small, torch.zeros(1, 4, 6))
    assert resized.dtype == torch.float32
    torch.testing.assert_close(resized, F.interpolate(small.float(), size=(4, 6), mode="bilinear"))
    assert resize_to_target(small, torch.zeros(1, 2, 3)) is small  # same size: untouched
    # the notes' `h != ht and w != wt` guard would skip the resize and torch would refuse
    with pytest.raises(RuntimeError):
        F.cross_entropy(logits, target)


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_out_of_range_label_raises_with_values(cls):
    logits, _ = three_pixels()
    with pytest.raises(ValueError, match=r"\[-1, 2\].*ignore_index=255"):
        cls()(logits, torch.tensor([[[2, -1, 255]]]))
    with pytest.raises(ValueError, match="integer"):
        cls()(logits, torch.zeros(1, 1, 3))


def test_custom_ignore_index():
    logits, _ = three_pixels()
    target = torch.tensor([[[0, 1, -1]]])
    assert CrossEntropyLoss(ignore_index=-1)(logits, target).item() == pytest.approx(1.5 * LN2)


# ---------------------------------------------------------------- gradients, autocast, configs


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_gradient_flows_to_main_and_aux(cls):
    g = torch.Generator().manual_seed(3)
    main = torch.randn(2, 3, 6, 6, generator=g, requires_grad=True)
    aux = torch.randn(2, 3, 3, 3, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (2, 6, 6), generator=g)
    target[0, 0] = 255
    kwargs = {"min_kept": 10} if issubclass(cls, OhemCrossEntropyLoss) else {}
    value = cls(**kwargs)({"out": main, "aux": [aux]}, target)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    for t in (main, aux):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_bf16_logits_are_computed_in_float32(cls):
    logits, target = three_pixels()
    value = cls()(logits.to(torch.bfloat16), target)
    assert value.dtype == torch.float32
    reference = cls()(logits.float(), target)
    assert value.item() == pytest.approx(reference.item(), rel=2e-2)


@pytest.mark.parametrize("path", sorted(CONF_LOSS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_loss_config_instantiates_and_runs(path):
    cfg = OmegaConf.create({"dataset": {"ignore_index": 255}, "loss": OmegaConf.load(path)})
    assert cfg.loss.class_weights is None
    loss = instantiate(cfg.loss)
    assert loss.ignore_index == 255
    logits, target = three_pixels()
    value = loss({"out": logits, "aux": [torch.zeros(1, 2, 1, 1, dtype=torch.float64)]}, target)
    assert torch.isfinite(value) and value.item() > 0
    cfg.loss.class_weights = [1.0, 2.0]  # what run.py puts in place of "auto"
    assert instantiate(cfg.loss).class_weights.tolist() == [1.0, 2.0]


def test_config_glob_sees_all_losses():
    expected = {"ce", "focal", "dice", "ce_dice", "ohem", "lovasz", "ce_lovasz", "ohem_detail"}
    assert {p.stem for p in CONF_LOSS.glob("*.yaml")} >= expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_cuda_matches_cpu(cls):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[0, :2] = 255
    loss = cls(class_weights=[1.0, 2.0, 0.5])
    cpu = loss(logits, target)
    gpu = loss.to("cuda")(logits.cuda(), target.cuda())
    assert gpu.device.type == "cuda"
    assert gpu.item() == pytest.approx(cpu.item(), rel=1e-4)
    with pytest.raises(ValueError, match=r"\[7\]"):
        loss(logits.cuda(), torch.full_like(target, 7).cuda())
