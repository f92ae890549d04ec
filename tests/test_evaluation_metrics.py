"""core/evaluation/metrics.py: metrics checked against numbers worked out by hand in the
comments."""
import numpy as np
import pytest

from drseg.core.errors import InputError
from drseg.core.evaluation.metrics import (ConfusionMatrix, ReferAccumulator,
                                           mask_intersection_union, per_class_accuracy,
                                           refer_metrics)


def _two_image_confusion():
    cm = ConfusionMatrix(3, ignore_index=255)
    # image 1, (gt, pred) pairs: (0,0) (0,0) (0,1) (1,1) / (1,1) (1,0) (2,2) (255,2: ignored)
    cm.update(np.array([[0, 0, 0, 1], [1, 1, 2, 255]]), np.array([[0, 0, 1, 1], [1, 0, 2, 2]]))
    # image 2: (2,2) and (2,9): 9 is no class, so a miss for class 2
    cm.update(np.array([[2, 2]], np.uint8), np.array([[2, 9]], np.uint8))
    return cm


def test_confusion_counts_by_hand():
    cm = _two_image_confusion()
    assert cm.matrix.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 2]]
    assert cm.unassigned.tolist() == [0, 0, 1]
    assert cm.gt_pixels.tolist() == [3, 3, 3]
    assert cm.pred_pixels.tolist() == [3, 3, 2]
    assert cm.images == 2


def test_ovss_metrics_by_hand():
    result = _two_image_confusion().compute(["road", "tree", "water"])
    assert set(result) == {"mIoU", "mACC", "aAcc", "per_class"}
    # IoU road = 2/(3+3-2) = 1/2, tree = 2/4 = 1/2, water = 2/(3+2-2) = 2/3
    assert result["per_class"]["road"] == pytest.approx(50.0)
    assert result["per_class"]["tree"] == pytest.approx(50.0)
    assert result["per_class"]["water"] == pytest.approx(200.0 / 3)
    assert result["mIoU"] == pytest.approx((50 + 50 + 200 / 3) / 3)     # 55.56
    assert result["mACC"] == pytest.approx(200.0 / 3)                    # 2/3 for every class
    assert result["aAcc"] == pytest.approx(100.0 * 6 / 9)


def test_absent_classes_follow_mmseg():
    cm = ConfusionMatrix(3)
    # class 0: 1 of 2 right; class 1 predicted once but absent from the ground truth;
    # class 2 absent from both -> NaN, left out of every mean
    cm.update(np.array([0, 0]), np.array([0, 1]))
    result = cm.compute(["a", "b", "c"])
    assert result["per_class"] == {"a": pytest.approx(50.0), "b": 0.0, "c": None}
    assert result["mIoU"] == pytest.approx(25.0)          # (1/2 + 0) / 2
    acc = per_class_accuracy(cm, ["a", "b", "c"])
    assert acc == {"a": pytest.approx(50.0), "b": None, "c": None}
    assert result["mACC"] == pytest.approx(50.0)          # only class a has ground truth
    assert result["aAcc"] == pytest.approx(50.0)


def test_unknown_ground_truth_values_are_skipped_and_counted():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 7, 255, 1]), np.array([0, 0, 0, 1]))
    assert cm.matrix.tolist() == [[1, 0], [0, 1]]
    assert cm.unknown_gt == 1


def test_chunked_accumulation_equals_one_pass(monkeypatch):
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(50, 40))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 5, size=gt.shape)
    whole = ConfusionMatrix(4)
    whole.update(gt, pred)
    import drseg.core.evaluation.metrics as metrics
    monkeypatch.setattr(metrics, "_CHUNK", 7)
    chunked = ConfusionMatrix(4)
    chunked.update(gt, pred)
    assert (whole.matrix == chunked.matrix).all()
    assert (whole.unassigned == chunked.unassigned).all()
    # the brute-force definition
    for g in range(4):
        for p in range(4):
            assert whole.matrix[g, p] == np.count_nonzero((gt == g) & (pred == p))


def test_size_mismatch_is_an_input_error():
    cm = ConfusionMatrix(2)
    with pytest.raises(InputError, match="4x2 px but its ground truth is 3x2 px"):
        cm.update(np.zeros((2, 3)), np.zeros((2, 4)), what="prediction")


def test_wrong_number_of_class_names():
    with pytest.raises(InputError, match="2 class names were given for 3 classes"):
        ConfusionMatrix(3).compute(["a", "b"])


def test_refer_metrics_by_hand():
    acc = ReferAccumulator()
    gt1 = np.zeros((4, 4), bool); gt1[0, :4] = True               # 4 px
    pred1 = np.zeros((4, 4), bool); pred1[0, :2] = True            # I=2, U=4 -> 0.5
    gt2 = np.zeros((5, 5), bool); gt2.flat[:10] = True             # 10 px
    pred2 = np.zeros((5, 5), bool); pred2.flat[:7] = True          # I=7, U=10 -> 0.7
    gt3 = np.zeros((4, 4), bool); gt3.flat[:5] = True
    pred3 = np.zeros((4, 4), bool); pred3.flat[5:10] = True        # I=0, U=10 -> 0
    empty = np.zeros((3, 3), bool)                                 # I=0, U=0 -> 0 (LAVT)
    assert acc.update(gt1, pred1) == pytest.approx(0.5)
    assert acc.update(gt2, pred2) == pytest.approx(0.7)
    assert acc.update(gt3, pred3) == 0.0
    assert acc.update(empty, empty) == 0.0
    result = acc.compute()
    assert list(result) == ["gIoU", "cIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"]
    assert result["gIoU"] == pytest.approx(30.0)                   # (0.5 + 0.7 + 0 + 0) / 4
    assert result["cIoU"] == pytest.approx(100.0 * 9 / 24)         # (2+7+0+0) / (4+10+10+0)
    assert result["Pr@0.5"] == pytest.approx(50.0)
    assert result["Pr@0.6"] == pytest.approx(25.0)
    assert result["Pr@0.7"] == pytest.approx(25.0)                 # IoU 0.7 counts at 0.7
    assert result["Pr@0.8"] == 0.0 and result["Pr@0.9"] == 0.0


def test_refer_pixel_confusion_and_empty_iou_option():
    acc = ReferAccumulator(empty_iou=1.0)
    gt = np.array([[1, 1, 0], [0, 0, 0]])
    pred = np.array([[1, 0, 1], [1, 0, 0]])
    acc.update(gt, pred)                   # I=1, U=4
    acc.update(np.zeros((2, 2)), np.zeros((2, 2)))
    # rows = ground truth (background, target): 6 px image: bg&bg = 2, bg->target 2,
    # target->bg 1, target&target 1; then 4 background px of the empty sample
    assert acc.pixel_confusion.tolist() == [[6, 2], [1, 1]]
    assert acc.ious == [0.25, 1.0]
    assert acc.compute()["gIoU"] == pytest.approx(62.5)


def test_refer_mask_size_mismatch():
    with pytest.raises(InputError, match="must have the size of its ground truth"):
        mask_intersection_union(np.zeros((2, 2)), np.zeros((3, 2)))


def test_refer_metrics_of_nothing_are_none():
    assert refer_metrics([], [], []) == {"gIoU": None, "cIoU": None, "Pr@0.5": None,
                                         "Pr@0.6": None, "Pr@0.7": None, "Pr@0.8": None,
                                         "Pr@0.9": None}
