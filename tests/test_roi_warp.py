"""roi_warp against torchvision.ops.roi_align (values, feature gradients) and against finite
differences (gradcheck w.r.t. features and box coordinates); empty input, bad arguments, CUDA."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align

from fasterrcnn.modeling.roi_warp import roi_warp


def _rois(n_images: int, count: int, height: int, width: int, stride: int, seed: int) -> torch.Tensor:
    """[count, 5] RoIs in input pixels: many partly outside the map, some smaller than a cell
    (down to ~0.01 cells) and a few entirely outside it."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, n_images, (count, 1), generator=g).float()
    xy = torch.rand(count, 2, generator=g) * torch.tensor([width * stride + 40.0, height * stride + 40.0]) - 30
    wh = 150 * torch.rand(count, 2, generator=g) * torch.rand(count, 1, generator=g) ** 3 + 0.1
    rois = torch.cat((image, xy, xy + wh), dim=1)
    rois[:3, 1:] = torch.tensor(
        [
            [-90.0, -80.0, -20.0, -15.0],  # entirely outside, above-left
            [width * stride + 20.0, 4.0, width * stride + 60.0, 30.0],  # entirely outside, right
            [3.0, 4.0, 3.5, 4.2],  # tiny
        ]
    )
    return rois


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2, 3])  # 0: adaptive, ceil(RoI size / bins)
@pytest.mark.parametrize("output_size", [7, (3, 5)])
def test_forward_and_feature_gradient_equal_roi_align(
    aligned: bool, sampling_ratio: int, output_size: int | tuple[int, int]
) -> None:
    features = torch.randn(3, 6, 11, 17, requires_grad=True)
    rois = _rois(3, 60, 11, 17, 8, seed=sampling_ratio + 10 * int(aligned))
    ref = roi_align(features, rois, output_size, 1 / 8, sampling_ratio, aligned)
    out = roi_warp(features, rois, output_size, 1 / 8, sampling_ratio, aligned)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out[0].abs().max() == 0 and out[1].abs().max() == 0  # the two RoIs outside the map
    grad = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad(ref, features, grad)
    (g_out,) = torch.autograd.grad(out, features, grad)
    torch.testing.assert_close(g_out, g_ref, atol=1e-5, rtol=1e-5)


def test_list_of_boxes_equals_roi_tensor_and_gets_gradients() -> None:
    features = torch.randn(2, 4, 9, 9)
    boxes = [
        torch.tensor([[0.0, 0.0, 40.0, 30.0]], requires_grad=True),
        torch.tensor([[8.3, 8.1, 24.7, 64.2], [1.2, 2.1, 3.3, 4.4]], requires_grad=True),
    ]
    rois = torch.cat((torch.tensor([[0.0], [1.0], [1.0]]), torch.cat([b.detach() for b in boxes])), dim=1)
    out = roi_warp(features, boxes, 5, 1 / 4, 2, True)
    torch.testing.assert_close(out, roi_warp(features, rois, 5, 1 / 4, 2, True))
    torch.testing.assert_close(out, roi_align(features, boxes, 5, 1 / 4, 2, True), atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    assert all(b.grad is not None and b.grad.abs().sum() > 0 for b in boxes)


def _sample_coords(
    rois: torch.Tensor, size: tuple[int, int], scale: float, ratio: int, aligned: bool
) -> torch.Tensor:
    """All sample coordinates (y and x, in cells) of RoIAlign's definition, flattened."""
    offset = 0.5 if aligned else 0.0
    coords = []
    for axis, bins in ((2, size[0]), (1, size[1])):
        start = rois[:, axis] * scale - offset
        length = rois[:, axis + 2] * scale - offset - start
        if not aligned:
            length = length.clamp(min=1.0)
        steps = (torch.arange(bins, dtype=rois.dtype)[:, None] + (torch.arange(ratio) + 0.5) / ratio).reshape(-1)
        coords.append((start[:, None] + steps * (length / bins)[:, None]).reshape(-1))
    return torch.cat(coords)


# A hand-made small case: boxes partly outside the map (left, top, right, bottom), tiny boxes
# (< 1 cell, and < 1 cell with aligned=False where the size clamp to 1 cell makes x2/y2 inert), a
# box entirely outside and two images. The coordinates are chosen so that no sample point lies
# within 0.02 cells of an integer or of the borders -1, 0, H-1, H (W alike): there RoIAlign has
# kinks (bilinear cells meet, the clamp to row 0 / the last row) or jumps (a sample leaving the
# map), so the finite differences of gradcheck would not match any one-sided derivative.
# test_gradcheck_case_avoids_kinks checks that premise.
_GRAD_FEATURE_SIZE = (5, 6)
_GRAD_ROIS = [
    [0.0, -1.63, 0.37, 2.91, 3.21],  # partly left of the map
    [0.0, 1.27, -2.11, 4.43, 2.62],  # partly above
    [1.0, 3.12, 2.21, 7.93, 6.47],  # partly right of and below the map
    [1.0, 2.21, 1.29, 2.63, 1.57],  # tiny: 0.42 x 0.28 px (0.21 x 0.14 cells)
    [0.0, 1.57, 3.36, 5.44, 3.69],  # thin
    [1.0, -9.3, -8.7, -5.1, -4.2],  # entirely outside: zero value and gradient
]


def _grad_case(aligned: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3 + int(aligned))
    features = torch.randn(2, 3, *_GRAD_FEATURE_SIZE, generator=g, dtype=torch.float64)
    rois = torch.tensor(_GRAD_ROIS, dtype=torch.float64)
    return features, rois


@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck_case_avoids_kinks(aligned: bool) -> None:
    _, rois = _grad_case(aligned)
    v = _sample_coords(rois, (2, 3), 0.9, 2, aligned)
    assert (v - v.round()).abs().min() > 0.02
    h, w = _GRAD_FEATURE_SIZE
    for border in (-1.0, 0.0, h - 1.0, h, w - 1.0, w):
        assert (v - border).abs().min() > 0.02
    sizes = (rois[:, 3:] - rois[:, 1:3]) * 0.9
    assert (sizes - 1.0).abs().min() > 0.02  # aligned=False clamps sizes to >= 1 cell: a kink at 1


def _gradcheck_and_box_grad(features: torch.Tensor, rois: torch.Tensor, scale: float, ratio: int,
                            aligned: bool) -> torch.Tensor:
    """gradcheck of roi_warp (output 2 x 3) w.r.t. the features and the box coordinates of
    ``rois``; returns d(sum of the output)/d(coordinates) [R, 4]."""
    index, coords = rois[:, :1], rois[:, 1:].clone().requires_grad_(True)
    features = features.detach().requires_grad_(True)

    def warp(f: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return roi_warp(f, torch.cat((index, c), dim=1), (2, 3), scale, ratio, aligned)

    assert torch.autograd.gradcheck(warp, (features, coords), eps=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad(warp(features, coords).sum(), coords)
    return grad


@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck_features_and_boxes(aligned: bool) -> None:
    features, rois = _grad_case(aligned)
    grad = _gradcheck_and_box_grad(features, rois, 0.9, 2, aligned)
    assert grad[5].abs().max() == 0  # entirely outside the map
    assert grad[:5].abs().sum(dim=1).min() > 0  # every other box moves its samples


@pytest.mark.parametrize("aligned", [False, True])
def test_adaptive_sampling_values_and_gradcheck(aligned: bool) -> None:
    """sampling_ratio 0: each RoI has ceil(size / bins) samples per bin and axis (here 1 to 4
    among the RoIs, so the padding to the largest count is exercised); values as roi_align and
    box gradients as finite differences away from the points where a count changes."""
    g = torch.Generator().manual_seed(7)
    features = torch.randn(2, 3, 12, 14, generator=g, dtype=torch.float64)
    bins = torch.tensor([3.0, 2.0], dtype=torch.float64)  # x, y
    offset = 0.5 if aligned else 0.0

    def safe(roi: torch.Tensor) -> bool:
        """No sample within 0.02 cells of an integer (where bilinear cells meet; the borders are
        integers too) and no RoI size within 0.05 of a count change (a multiple of the bins)."""
        size = roi[3:] - roi[1:3]
        if ((size / bins) - (size / bins).round()).abs().min() < 0.05:
            return False
        n = torch.ceil(size / bins).long()
        for axis, (b, k) in enumerate(zip(bins.long().tolist(), n.tolist())):
            steps = (torch.arange(b, dtype=roi.dtype)[:, None] + (torch.arange(k) + 0.5) / k).reshape(-1)
            v = roi[1 + axis] - offset + steps * size[axis] / b
            if (v - v.round()).abs().min() < 0.02:
                return False
        return True

    picked: list[torch.Tensor] = []
    while len(picked) < 5:
        start = torch.rand(2, generator=g, dtype=torch.float64) * torch.tensor([10.0, 8.0], dtype=torch.float64)
        size = 1.2 + torch.rand(2, generator=g, dtype=torch.float64) * 8
        roi = torch.cat((torch.tensor([float(len(picked) % 2)], dtype=torch.float64), start, start + size))
        if safe(roi):
            picked.append(roi)
    rois = torch.stack(picked)
    counts = torch.ceil((rois[:, 3:] - rois[:, 1:3]) / bins)
    assert len(set(counts.flatten().tolist())) >= 3  # RoIs with different counts in one batch
    ref = roi_align(features, rois, (2, 3), 1.0, 0, aligned)
    torch.testing.assert_close(roi_warp(features, rois, (2, 3), 1.0, 0, aligned), ref, atol=1e-10, rtol=1e-10)
    grad = _gradcheck_and_box_grad(features, rois, 1.0, 0, aligned)
    assert grad.abs().sum(dim=1).min() > 0


def test_box_gradient_zero_where_the_value_is_constant() -> None:
    """aligned=False: a box smaller than a cell is widened to one cell from its start, so its end
    gets no gradient; a box left of column 0 (within [-1, 0]) reads column 0 alone."""
    features = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    coords = torch.tensor([[2.2, 1.3, 2.6, 3.7], [-0.9, 1.3, -0.2, 3.7]], dtype=torch.float64, requires_grad=True)
    out = roi_warp(features, [coords], 2, 1.0, 2, False)
    (grad,) = torch.autograd.grad(out.sum(), coords)
    assert grad[0, 2] == 0 and grad[0, 0] != 0
    assert grad[1, 0] == 0 and grad[1, 2] == 0 and grad[1, 1] != 0


@pytest.mark.parametrize("boxes", [torch.zeros((0, 5)), [torch.zeros((0, 4)), torch.zeros((0, 4))], []])
def test_empty_boxes(boxes: torch.Tensor | list[torch.Tensor]) -> None:
    features = torch.randn(2, 4, 9, 9, requires_grad=True)
    out = roi_warp(features, boxes, (7, 5), 0.5, 2, True)
    assert out.shape == (0, 4, 7, 5)
    out.sum().backward()
    assert features.grad is not None and features.grad.abs().max() == 0


def test_bad_arguments_raise() -> None:
    features = torch.randn(1, 2, 5, 5)
    rois = torch.tensor([[0.0, 1.0, 1.0, 3.0, 3.0]])
    with pytest.raises(ValueError, match=r"\[R, 5\]"):
        roi_warp(features, rois[:, 1:], 7, 1.0, 2, True)
    with pytest.raises(ValueError, match=r"\[R_i, 4\]"):
        roi_warp(features, [rois], 7, 1.0, 2, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("aligned", [False, True])
def test_cuda_matches_cpu(aligned: bool) -> None:
    features = torch.randn(3, 8, 11, 17, requires_grad=True)
    rois = _rois(3, 50, 11, 17, 8, seed=7).requires_grad_(True)
    grad = torch.randn(50, 8, 7, 7)
    results = []
    for device in ("cpu", "cuda"):
        f = features.detach().to(device).requires_grad_(True)
        r = rois.detach().to(device).requires_grad_(True)
        out = roi_warp(f, r, 7, 1 / 8, 2, aligned)
        torch.testing.assert_close(out, roi_align(f, r.detach(), 7, 1 / 8, 2, aligned), atol=1e-5, rtol=1e-5)
        g_f, g_r = torch.autograd.grad(out, (f, r), grad.to(device))
        results.append([t.cpu() for t in (out, g_f, g_r)])
    for cpu, cuda in zip(*results):
        torch.testing.assert_close(cuda, cpu, atol=1e-4, rtol=1e-4)
    assert math.isfinite(float(results[1][2].abs().sum()))
