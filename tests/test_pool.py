"""The history pool: fills, then swaps with probability 1/2; state round trip."""
import torch

from cycleseg.pool import ImagePool


def batch(start, n=4):
    return torch.arange(start, start + n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 2, 3, 3).clone()


def test_fills_then_mixes_old_and_new():
    pool = ImagePool(size=6, seed=0)
    out = pool.query(batch(0))
    assert torch.equal(out, batch(0)) and len(pool.images) == 4           # room: returned as is, stored
    out = pool.query(batch(4))                                              # 2 more fit, then the pool is full
    assert torch.equal(out[:2], batch(4)[:2]) and len(pool.images) == 6
    returned_old, n = 0, 0
    for s in range(10, 400, 4):
        new = batch(s)
        out = pool.query(new)
        for i in range(4):
            n += 1
            if not torch.equal(out[i], new[i]):                             # an older fake came back
                returned_old += 1
                assert out[i, 0, 0, 0] < s + i                              # stored before this image
    assert 0.4 < returned_old / n < 0.6                                      # probability 1/2
    assert len(pool.images) == 6


def test_size_zero_is_identity_and_state_round_trip():
    assert torch.equal(ImagePool(0).query(batch(0)), batch(0))
    a, b = ImagePool(3, seed=5), ImagePool(3, seed=99)
    for s in range(0, 20, 4):
        a.query(batch(s))
    b.load_state_dict(a.state_dict())
    for s in range(20, 60, 4):
        assert torch.equal(a.query(batch(s)), b.query(batch(s)))
