import math

import torch

from cycleseg.metrics import ConfusionMatrix


def test_miou_by_hand():
    target = torch.tensor([[0, 0, 1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    cm = ConfusionMatrix(4, ignore_index=255)
    cm.update(pred, target)
    s = cm.summary()
    # class 0: TP 1, FP 1 (pred 0 at a 2), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 0 -> 0;
    # class 3 absent from both -> excluded. The ignored pixel (pred 2) counts nowhere.
    assert s["iou"] == {"0": round(1 / 3, 6), "1": round(2 / 3, 6), "2": 0.0, "3": None}
    assert math.isclose(s["miou"], (1 / 3 + 2 / 3 + 0) / 3)
    assert math.isclose(s["miou_no_bg"], (2 / 3 + 0) / 2)
    assert math.isclose(s["dice"]["1"], round(2 * 2 / (3 + 2), 6))
    assert math.isclose(s["pixel_acc"], 3 / 5)


def test_image_dice_is_the_mean_over_the_classes_an_image_shows():
    import numpy as np

    from cycleseg.metrics import image_dice

    truth = np.array([[[0, 1], [2, 255]], [[0, 0], [0, 0]], [[1, 1], [0, 0]]])
    pred = np.array([[[0, 1], [1, 2]], [[0, 0], [0, 0]], [[1, 1], [0, 0]]])
    got = image_dice(pred, truth, 3)
    # image 0: class 1 2*1/(2+1), class 2 0 (the pixel predicted 2 is ignored); image 1: no class; image 2: exact
    assert np.allclose(got[[0, 2]], [(2 / 3 + 0) / 2, 1.0]) and np.isnan(got[1])
