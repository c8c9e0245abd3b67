"""FixMatch's strong view (cycleseg/views.py): CutMix boxes, partners, ranges, determinism."""
import pytest
import torch

from cycleseg.views import blur, cutmix_boxes, jitter, partner, strong_view


def test_partner_is_the_next_image():
    t = torch.arange(4).view(4, 1)
    assert partner(t).flatten().tolist() == [1, 2, 3, 0]


def test_cutmix_boxes_area_probability_and_shape():
    torch.manual_seed(0)
    boxes = cutmix_boxes(400, 32, 48, 0.5, "cpu")
    areas = boxes.flatten(1).float().mean(1)
    some = areas > 0
    assert 0.4 < some.float().mean() < 0.6                            # p = 0.5
    assert areas[some].max() <= 0.4 + 1e-6 and areas[some].min() >= 0.015
    for b in boxes[some][:20]:                                        # one axis-aligned rectangle each
        ys, xs = b.nonzero(as_tuple=True)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert b[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all() and b.sum() == h * w
    assert not cutmix_boxes(50, 16, 16, 0.0, "cpu").any()


def test_strong_view_of_flat_images_shows_the_partner_inside_the_box():
    """Jitter and blur keep a flat image flat, so the strong view of image i is one value outside its box
    and its partner's value inside."""
    torch.manual_seed(3)
    x = torch.linspace(-0.8, 0.8, 6).view(6, 1, 1, 1).expand(6, 1, 20, 20).contiguous()
    s, box = strong_view(x, cutmix=1.0)
    assert s.shape == x.shape and s.min() >= -1 and s.max() <= 1 and box.any(dim=(1, 2)).all()
    outside = torch.stack([s[i, 0][~box[i]].unique() for i in range(6)]).flatten()  # one value each
    for i in range(6):
        assert torch.allclose(s[i, 0][box[i]], outside[(i + 1) % 6].expand(int(box[i].sum())), atol=1e-6)


def test_views_are_deterministic_under_the_torch_seed_and_change_images():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.manual_seed(5)
    a = strong_view(x, 0.5)
    torch.manual_seed(5)
    b = strong_view(x, 0.5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], x)
    u = torch.rand(64, 1, 8, 8)
    torch.manual_seed(0)
    changed = (jitter(u) != u).flatten(1).any(1).float().mean()
    assert 0.65 < changed < 0.95                                      # p = 0.8
    torch.manual_seed(0)
    blurred = blur(u)
    assert blurred.std() < u.std() and (blurred.flatten(1) == u.flatten(1)).all(1).float().mean() == pytest.approx(0.5, abs=0.2)
