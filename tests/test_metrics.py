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
