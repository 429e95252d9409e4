import math

import torch

from fasterrcnn.modeling.box_coding import BoxCoder, decode, encode


def test_encode_hand_computed():
    ref = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    tgt = torch.tensor([[1.0, 2, 11, 12], [0, 0, 20, 5]])
    d = encode(ref, tgt)
    expected = torch.tensor([[0.1, 0.2, 0.0, 0.0], [0.5, -0.25, math.log(2.0), math.log(0.5)]])
    torch.testing.assert_close(d, expected)
    # the Fast R-CNN normalisation divides by the std (0.1, 0.1, 0.2, 0.2)
    torch.testing.assert_close(encode(ref, tgt, (10, 10, 5, 5)), expected * torch.tensor([10, 10, 5, 5.0]))


def test_round_trip_random_boxes():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(200, 2, generator=g) * 500
    wh = torch.rand(200, 2, generator=g) * 300 + 10  # ratios below the exp clamp
    ref = torch.cat((xy, xy + wh), 1)
    xy2 = torch.rand(200, 2, generator=g) * 500
    wh2 = torch.rand(200, 2, generator=g) * 300 + 1
    tgt = torch.cat((xy2, xy2 + wh2), 1)
    for weights in ((1.0, 1, 1, 1), (10.0, 10, 5, 5)):
        coder = BoxCoder(weights)
        back = coder.decode(coder.encode(ref.double(), tgt.double()), ref.double())
        torch.testing.assert_close(back, tgt.double(), rtol=1e-9, atol=1e-7)


def test_zero_deltas_give_reference():
    ref = torch.tensor([[3.0, 4, 30, 50]])
    torch.testing.assert_close(decode(torch.zeros(1, 4), ref), ref)


def test_class_specific_decode_shape():
    ref = torch.tensor([[0.0, 0, 10, 10], [5, 5, 25, 45]])
    deltas = torch.zeros(2, 4 * 3)
    deltas[1, 4:8] = torch.tensor([0.1, 0.0, 0.0, 0.0]) * 10  # class 1 of roi 1: shift by 0.1 w
    out = decode(deltas, ref, (10, 10, 5, 5))
    assert out.shape == (2, 12)
    torch.testing.assert_close(out[1, 4:8], torch.tensor([7.0, 5, 27, 45]))
    torch.testing.assert_close(out[0, 8:12], ref[0])


def test_huge_deltas_are_clamped_not_inf():
    ref = torch.tensor([[0.0, 0, 16, 16]])
    out = decode(torch.tensor([[0.0, 0, 1e6, 1e6]]), ref)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(1000.0), rtol=1e-5, atol=1e-3)
