"""ConfusionMatrix against hand-computed values and against the notes' numpy fast_hist."""

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from segkit.evaluation.metrics import ConfusionMatrix

# ------------------------------------------------ reference: the notes (bubbliiiing utils_metrics)


def fast_hist(a, b, n):
    """a = flattened label, b = flattened prediction; labels outside [0, n) (255) are dropped."""
    k = (a >= 0) & (a < n)
    return np.bincount(n * a[k].astype(int) + b[k], minlength=n**2).reshape(n, n)


def per_class_iu(hist):
    return np.diag(hist) / np.maximum((hist.sum(1) + hist.sum(0) - np.diag(hist)), 1)


def per_class_PA_Recall(hist):  # noqa: N802 - the notes' name
    return np.diag(hist) / np.maximum(hist.sum(1), 1)


def per_class_Precision(hist):  # noqa: N802 - the notes' name
    return np.diag(hist) / np.maximum(hist.sum(0), 1)


# ------------------------------------------------ hand example
# label [[0,0,1],[1,2,2]], pred [[0,1,1],[1,2,0]]
# mat[label, pred] = [[1,1,0],[0,2,0],[1,0,1]]; rows (label) 2,2,2; cols (pred) 2,3,1; TP 1,2,1
LABEL = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
PRED = torch.tensor([[[0, 1, 1], [1, 2, 0]]])


def check_hand_values(r: dict, num_classes: int = 3) -> None:
    extra = [math.nan] * (num_classes - 3)
    assert r["iou"][:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])  # TP / (row + col - TP)
    assert r["miou"] == pytest.approx(0.5)
    assert r["recall"][:3] == pytest.approx([1 / 2, 1.0, 1 / 2])  # TP / row
    assert r["mpa"] == pytest.approx(2 / 3)
    assert r["precision"][:3] == pytest.approx([1 / 2, 2 / 3, 1.0])  # TP / col
    assert r["pixel_acc"] == pytest.approx(4 / 6)
    assert r["dice"][:3] == pytest.approx([2 / 4, 4 / 5, 2 / 3])  # 2TP / (row + col)
    assert r["mdice"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert r["fwiou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)  # every class freq 1/3
    assert r["valid"] == [True] * 3 + [False] * len(extra)
    for key in ("iou", "recall", "precision", "dice"):
        assert all(math.isnan(v) for v in r[key][3:])


def test_hand_example():
    cm = ConfusionMatrix(3)
    cm.update(PRED, LABEL)
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert cm.mat.dtype == torch.int64
    r = cm.compute()
    check_hand_values(r)
    json.dumps(r)  # plain python types


def test_absent_class_is_nan_and_excluded_from_means():
    cm = ConfusionMatrix(5)  # classes 3 and 4 appear in neither label nor prediction
    cm.update(PRED, LABEL)
    check_hand_values(cm.compute(), num_classes=5)


def test_ignore_pixels_are_excluded_whatever_the_prediction():
    cm = ConfusionMatrix(3, ignore_index=255)
    label = torch.cat([LABEL, torch.full_like(LABEL, 255)])  # second image fully ignored
    pred = torch.cat([PRED, torch.tensor([[[2, 2, 2], [0, 1, 2]]])])
    cm.update(pred, label)
    assert cm.mat.sum().item() == 6
    check_hand_values(cm.compute())


def test_predicted_only_class_counts_as_valid_with_zero_scores():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[[0, 2]]]), torch.tensor([[[0, 1]]]))  # class 2 only predicted
    r = cm.compute()
    assert r["valid"] == [True, True, True]
    assert r["iou"] == [1.0, 0.0, 0.0]
    assert r["recall"] == [1.0, 0.0, 0.0]  # class 2: 0/0 -> 0 (notes: np.maximum(den, 1))
    assert r["precision"] == [1.0, 0.0, 0.0]  # class 1 never predicted: 0/0 -> 0
    assert r["miou"] == pytest.approx(1 / 3)
    assert r["fwiou"] == pytest.approx(0.5)  # freq 1/2 * iou 1 + 1/2 * 0


def test_updates_accumulate_and_reset():
    cm = ConfusionMatrix(3)
    cm.update(PRED[:, :1], LABEL[:, :1])
    cm.update(PRED[:, 1:], LABEL[:, 1:])
    check_hand_values(cm.compute())
    cm.reset()
    assert cm.mat.sum().item() == 0
    r = cm.compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_acc"]) and r["valid"] == [False] * 3


@pytest.mark.parametrize("seed, num_classes, drawn", [(0, 5, 5), (1, 7, 7), (2, 6, 4), (3, 2, 2)])
def test_agrees_exactly_with_notes_fast_hist(seed, num_classes, drawn):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, drawn, size=(3, 17, 19))
    label[rng.random(label.shape) < 0.15] = 255
    pred = rng.integers(0, drawn, size=label.shape)
    hist = fast_hist(label.flatten(), pred.flatten(), num_classes)

    cm = ConfusionMatrix(num_classes)
    for i in range(3):  # per-image updates, like the notes' loop over images
        cm.update(torch.from_numpy(pred[i : i + 1]), torch.from_numpy(label[i : i + 1]))
    assert np.array_equal(cm.mat.numpy(), hist)

    r = cm.compute()
    valid = np.array(r["valid"])
    assert np.array_equal(valid, (hist.sum(0) + hist.sum(1)) > 0)
    for key, ref in (
        ("iou", per_class_iu(hist)),
        ("recall", per_class_PA_Recall(hist)),
        ("precision", per_class_Precision(hist)),
    ):
        ours = np.array(r[key])
        assert np.array_equal(ours[valid], ref[valid]), key  # bit-exact
        assert np.isnan(ours[~valid]).all(), key
    assert r["miou"] == pytest.approx(per_class_iu(hist)[valid].mean(), rel=1e-12)
    assert r["mpa"] == pytest.approx(per_class_PA_Recall(hist)[valid].mean(), rel=1e-12)
    assert r["pixel_acc"] == pytest.approx(np.diag(hist).sum() / hist.sum(), rel=1e-12)


def test_bad_values_raise_when_the_pass_is_read_not_per_update():
    cm = ConfusionMatrix(3)
    cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 3], [7, 255]]]))
    with pytest.raises(ValueError, match=r"labels \[3, 7\] outside \[0, 3\)"):
        cm.compute()
    cm.reset()
    cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, -3], [700, 1]]]))
    with pytest.raises(ValueError, match=r"labels \[-3, 700\] outside"):  # beyond the rows
        cm.compute()
    cm.reset()
    cm.update(torch.tensor([[[0, 3], [-1, 1]]]), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"pred holds class ids outside \[0, 3\).*min -1, max 3"):
        cm.compute()
    cm.reset()
    uint8 = torch.tensor([[[0, 4], [2, 255]]], dtype=torch.uint8)
    cm.update(torch.zeros(1, 2, 2, dtype=torch.long), uint8)
    with pytest.raises(ValueError, match=r"labels \[4\] outside"):
        cm.compute()
    cm.reset()  # a clean pass after a bad one computes normally
    cm.update(PRED, LABEL)
    check_hand_values(cm.compute())


def test_update_never_reads_a_value_back_to_the_host(monkeypatch):
    def host_read(*args):
        raise AssertionError("update() read a tensor value on the host (a device sync)")

    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    cm = ConfusionMatrix(3)
    for dtype in (torch.uint8, torch.int64):
        cm.update(PRED, LABEL.to(dtype))
        cm.update(PRED, torch.full_like(LABEL, 7).to(dtype))  # bad labels: found later
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"labels \[7\]"):
        cm.compute()


def test_bad_shapes_and_dtypes_raise_at_update():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="argmax"):
        cm.update(torch.zeros(1, 3, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        cm.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    assert cm.mat.sum().item() == 0  # nothing half-added


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_equals_the_hand_computed_matrix_for_each_label_dtype(dtype):
    # label [[0,0,1],[1,2,2]] plus a row of ignore (255); pred [[0,1,1],[1,2,0]] plus anything
    # mat[label, pred] = [[1,1,0],[0,2,0],[1,0,1]] (the ignore row adds nothing)
    label = torch.tensor([[[0, 0, 1], [1, 2, 2], [255, 255, 255]]], dtype=dtype)
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0], [2, 0, 1]]], dtype=dtype)
    cm = ConfusionMatrix(3)
    cm.update(pred, label)
    cm.update(pred.long(), label)  # predictions as argmax gives them (int64)
    assert cm.mat.tolist() == [[2, 2, 0], [0, 4, 0], [2, 0, 2]]
    assert cm.mat.dtype == torch.int64


def test_the_gpu_counting_path_equals_bincount():
    from segkit.evaluation.metrics import _count_scatter

    index = torch.randint(0, 50, (1000,), generator=torch.Generator().manual_seed(0)).int()
    bins = torch.zeros(60, dtype=torch.int64)
    _count_scatter(bins, index)
    assert torch.equal(bins, torch.bincount(index, minlength=60))


def test_negative_ignore_index_and_few_classes():
    cm = ConfusionMatrix(2, ignore_index=-100)  # torch's cross-entropy default
    cm.update(torch.tensor([[[0, 1, 1, 0]]]), torch.tensor([[[0, -100, 1, 1]]]))
    assert cm.mat.tolist() == [[1, 0], [1, 1]]


def test_all_reduce_is_noop_without_process_group():
    assert not (dist.is_available() and dist.is_initialized())
    cm = ConfusionMatrix(3)
    cm.update(PRED, LABEL)
    cm.all_reduce()
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_accumulation_stays_on_device():
    cm = ConfusionMatrix(3)  # device None: follows the inputs
    cm.update(PRED.cuda(), LABEL.cuda())
    assert cm.mat.device.type == "cuda"
    check_hand_values(cm.compute())
    fixed = ConfusionMatrix(3, device="cuda")
    fixed.update(PRED, LABEL)  # CPU inputs are moved to the matrix
    assert fixed.mat.device.type == "cuda" and fixed.mat.sum().item() == 6
