import math

import pytest
import torch

from fasterrcnn.modeling.anchors import AnchorGenerator, base_anchors, grid_anchors, inside_image


def test_paper_base_anchors_exact_values():
    a = base_anchors((128, 256, 512), (0.5, 1.0, 2.0))
    assert a.shape == (9, 4)
    r = math.sqrt(2.0)
    expected = []
    for ratio in (0.5, 1.0, 2.0):
        for s in (128, 256, 512):
            w, h = s / math.sqrt(ratio), s * math.sqrt(ratio)
            expected.append([-w / 2, -h / 2, w / 2, h / 2])
    torch.testing.assert_close(a, torch.tensor(expected))
    # spelled out: the 1:2 (h:w) anchor of area 128^2 is 181.02 x 90.51
    torch.testing.assert_close(a[0], torch.tensor([-64 * r, -32 * r, 64 * r, 32 * r]))
    torch.testing.assert_close(a[4], torch.tensor([-128.0, -128.0, 128.0, 128.0]))
    torch.testing.assert_close(a[8], torch.tensor([-256 / r, -256 * r, 256 / r, 256 * r]))


def test_base_anchor_areas_and_ratios():
    a = base_anchors((128, 256, 512), (0.5, 1.0, 2.0)).double()
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    sizes = torch.tensor([128.0, 256, 512] * 3, dtype=torch.float64)
    ratios = torch.tensor([0.5] * 3 + [1.0] * 3 + [2.0] * 3, dtype=torch.float64)
    torch.testing.assert_close(w * h, sizes**2, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(h / w, ratios, rtol=1e-6, atol=1e-6)


def test_grid_order_and_centres():
    base = base_anchors((16,), (1.0, 2.0))  # A = 2
    g = grid_anchors(base, (2, 3), stride=16, offset=0.5)
    assert g.shape == (2 * 3 * 2, 4)
    centres = (g[:, :2] + g[:, 2:]) / 2
    # index (y * W + x) * A + a
    torch.testing.assert_close(centres[0], torch.tensor([8.0, 8.0]))
    torch.testing.assert_close(centres[1], torch.tensor([8.0, 8.0]))
    torch.testing.assert_close(centres[2], torch.tensor([24.0, 8.0]))
    torch.testing.assert_close(centres[(1 * 3 + 2) * 2 + 1], torch.tensor([40.0, 24.0]))


def test_grid_offset_zero_matches_torchvision_convention():
    base = base_anchors((32,), (1.0,))
    g = grid_anchors(base, (1, 2), stride=16, offset=0.0)
    torch.testing.assert_close(g, torch.tensor([[-16.0, -16, 16, 16], [0, -16, 32, 16]]))


def test_inside_image_straddle():
    anchors = torch.tensor([[0.0, 0, 10, 10], [-1, 0, 10, 10], [0, 0, 20, 10], [-5, -5, 25, 25]])
    assert inside_image(anchors, (10, 20), 0.0).tolist() == [True, False, True, False]
    assert inside_image(anchors, (10, 20), 1.0).tolist() == [True, True, True, False]
    assert inside_image(anchors, (10, 20), None).all()


def test_generator_caches_and_counts():
    gen = AnchorGenerator({"p4": (128, 256, 512)}, (0.5, 1, 2), {"p4": 16})
    assert gen.num_anchors == 9 and gen.levels == ("p4",)
    [a] = gen({"p4": (38, 50)})
    assert a.shape == (38 * 50 * 9, 4)
    assert gen({"p4": (38, 50)})[0] is a
    assert torch.isfinite(a).all()


def test_generator_levels_one_size_each():
    """An FPN's levels: one size per level, each on its own stride, in the levels' order."""
    gen = AnchorGenerator({"p3": (32,), "p4": (64,)}, (1.0,), {"p3": 8, "p4": 16}, offset=0.0)
    assert gen.num_anchors == 1
    a3, a4 = gen({"p3": (2, 3), "p4": (1, 2)})
    torch.testing.assert_close(a3[:2], torch.tensor([[-16.0, -16, 16, 16], [-8, -16, 24, 16]]))
    torch.testing.assert_close(a4, torch.tensor([[-32.0, -32, 32, 32], [-16, -32, 48, 32]]))
    with pytest.raises(ValueError, match="same number"):
        AnchorGenerator({"p3": (32,), "p4": (64, 128)}, (1.0,), {"p3": 8, "p4": 16})
    with pytest.raises(ValueError, match="levels"):
        AnchorGenerator({"p3": (32,)}, (1.0,), {"p4": 16})


@pytest.mark.parametrize("size", [(1, 1), (5, 7)])
def test_small_grids(size):
    g = grid_anchors(base_anchors((8,), (1.0,)), size, stride=8)
    assert g.shape == (size[0] * size[1], 4)
