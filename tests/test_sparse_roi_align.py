"""sparse_roi_align against torchvision.ops.roi_align: values, gradients, borders, empty input."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from fasterrcnn.modeling.pooler import RoIPooler
from fasterrcnn.modeling.sparse_roi_align import roi_align_matrix, sparse_roi_align, transpose_csr


def _rois(n_images: int, count: int, height: int, width: int, stride: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, n_images, (count, 1), generator=g).float()
    xy = torch.rand(count, 2, generator=g) * torch.tensor([width * stride, height * stride])
    wh = torch.rand(count, 2, generator=g) * 150 + 0.5
    # some RoIs start left of / above the image and some end past it (border rules)
    return torch.cat((image, xy - 20, xy - 20 + wh), dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_matches_torchvision_values_and_gradients(aligned: bool, sampling_ratio: int) -> None:
    torch.manual_seed(0)
    features = torch.randn(3, 5, 11, 17, requires_grad=True)
    rois = _rois(3, 40, 11, 17, 8, seed=sampling_ratio)
    ref = roi_align(features, rois, 7, 1 / 8, sampling_ratio, aligned)
    out = sparse_roi_align(features, rois, 7, 1 / 8, sampling_ratio, aligned)
    assert out.shape == ref.shape == (40, 5, 7, 7)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad(ref, features, grad)
    (g_out,) = torch.autograd.grad(out, features, grad)
    torch.testing.assert_close(g_out, g_ref, atol=1e-5, rtol=1e-5)


def test_list_of_boxes_equals_roi_tensor() -> None:
    features = torch.randn(2, 4, 9, 9)
    boxes = [torch.tensor([[0.0, 0.0, 40.0, 30.0]]), torch.tensor([[8.0, 8.0, 24.0, 64.0], [1.0, 2.0, 3.0, 4.0]])]
    rois = torch.tensor([[0, 0.0, 0.0, 40.0, 30.0], [1, 8.0, 8.0, 24.0, 64.0], [1, 1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(
        sparse_roi_align(features, boxes, 3, 1 / 8, 2), sparse_roi_align(features, rois, 3, 1 / 8, 2)
    )


def test_hand_computed_cell() -> None:
    # a 1x1 output bin with one sample at the centre of the RoI (x, y) = (1.5, 0.5) on a 2x3 map:
    # halfway between columns 1 and 2 of row 0
    features = torch.tensor([[[[0.0, 2.0, 4.0], [10.0, 10.0, 10.0]]]])
    rois = torch.tensor([[0, 1.0, 0.0, 2.0, 1.0]])
    out = sparse_roi_align(features, rois, 1, 1.0, 1, aligned=False)
    assert out.item() == pytest.approx(3.0 * 0.5 + 10.0 * 0.5)  # (x, y) = (1.5, 0.5): 4 neighbours


def test_matrix_rows_sum_to_one_inside_and_zero_outside() -> None:
    rois = torch.tensor([[0, 8.0, 8.0, 40.0, 40.0], [0, -500.0, -500.0, -300.0, -300.0]])
    dense = roi_align_matrix(rois, (1, 10, 10), 2, 1 / 8, 2, aligned=False).to_dense()
    assert dense.shape == (8, 100)
    torch.testing.assert_close(dense[:4].sum(1), torch.ones(4))
    assert dense[4:].abs().sum() == 0  # every sample outside the map: zeros, as torchvision


def test_no_rois_gives_empty_output_connected_to_graph() -> None:
    features = torch.randn(1, 3, 4, 4, requires_grad=True)
    out = sparse_roi_align(features, [torch.zeros((0, 4))], 7, 1 / 8, 2)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert features.grad is not None and features.grad.abs().sum() == 0


def test_fixed_sampling_ratio_required() -> None:
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align_matrix(torch.zeros((1, 5)), (1, 4, 4), 7, 1.0, 0, aligned=True)


def test_pooler_dispatch_and_results() -> None:
    features = torch.randn(2, 6, 12, 12)
    boxes = [torch.tensor([[4.0, 4.0, 60.0, 50.0]]), torch.tensor([[0.0, 0.0, 90.0, 90.0]])]
    pooler = RoIPooler("roi_align", 7, {"p3": 8}, sampling_ratio=2, aligned=False)
    assert pooler._sparse_ok(features)
    assert not pooler._sparse_ok(features.double())
    assert not RoIPooler("roi_align", 7, {"p3": 8}, sampling_ratio=0)._sparse_ok(features)
    torch.testing.assert_close(
        pooler({"p3": features}, boxes), roi_align(features, boxes, 7, 1 / 8, 2, aligned=False),
        atol=1e-5, rtol=1e-5,
    )
    # adaptive sampling (torchvision path) still works
    adaptive = RoIPooler("roi_align", 7, {"p3": 8}, sampling_ratio=0)
    assert adaptive({"p3": features}, boxes).shape == (2, 6, 7, 7)


def test_deterministic() -> None:
    torch.manual_seed(1)
    features = torch.randn(2, 16, 20, 20, requires_grad=True)
    rois = _rois(2, 100, 20, 20, 8, seed=3)
    results = []
    for _ in range(2):
        out = sparse_roi_align(features, rois, 7, 1 / 8, 2)
        (g,) = torch.autograd.grad((out * out).sum(), features)
        results.append((out.detach(), g))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_transpose_csr_equals_the_dense_transpose() -> None:
    dense = torch.tensor([[0.0, 2.0, 0.0, 1.0], [3.0, 0.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    t = transpose_csr(dense.to_sparse_csr())
    assert t.layout == torch.sparse_csr and t.shape == (4, 3)
    torch.testing.assert_close(t.to_dense(), dense.t())
    assert t.crow_indices().tolist() == [0, 1, 2, 2, 4]  # rows of A.T: columns of A, in order
    rois = torch.tensor([[0.0, 3, 5, 40, 30], [1, 0, 0, 64, 64], [0, 50, 10, 55, 12]])
    a = roi_align_matrix(rois, (2, 6, 8), 3, 1 / 8, 2, False)
    torch.testing.assert_close(transpose_csr(a).to_dense(), a.to_dense().t())
    empty = torch.zeros(0, 5).to_sparse_csr()
    assert transpose_csr(empty).shape == (5, 0)


def test_transpose_csr_rows_from_positions_and_general_rows() -> None:
    # RoIAlign's rows all hold S * S * 4 entries (an entry's row is its position // 16); a matrix
    # whose rows differ in length takes the general path; both are exact transposes
    torch.manual_seed(0)
    rois = torch.cat([torch.randint(0, 2, (30, 1)).float(), torch.rand(30, 2) * 40], 1)
    rois = torch.cat([rois, rois[:, 1:] + torch.rand(30, 2) * 30 + 1], 1)
    a = roi_align_matrix(rois, (2, 8, 10), 3, 1 / 8, 2, False)
    assert (a.crow_indices().diff() == 16).all()
    torch.testing.assert_close(transpose_csr(a).to_dense(), a.to_dense().t(), rtol=0, atol=0)
    crow = a.crow_indices()
    uneven = torch.sparse_csr_tensor(  # the last row's 16 entries split over two rows (8 + 8)
        torch.cat([crow[:-1], crow[-1:] - 8, crow[-1:]]), a.col_indices(), a.values(),
        (a.shape[0] + 1, a.shape[1]), check_invariants=False,  # rows repeat columns, as RoIAlign's do
    )
    torch.testing.assert_close(transpose_csr(uneven).to_dense(), uneven.to_dense().t(), rtol=0, atol=0)


def test_multi_level_pooler_is_sparse_in_training_only_and_matches_torchvision() -> None:
    """FPN pooling: with gradients on (training) every level goes through the sparse product and
    gives torchvision's values and feature gradients; inference keeps torchvision's op (parity
    with imported torchvision detectors)."""
    torch.manual_seed(0)
    strides = {"p3": 8, "p4": 16, "p5": 32}
    feats = {k: torch.randn(2, 4, 512 // s, 512 // s, requires_grad=True) for k, s in strides.items()}
    # sizes (sqrt of the area) 22 and 92 px -> p3, 250 px -> p4, 480 and 500 px -> p5
    boxes = [torch.tensor([[2.0, 3.0, 20.0, 30.0], [0.0, 10.0, 510.0, 500.0]]),
             torch.tensor([[10.0, 10.0, 260.0, 260.0], [5.0, 40.0, 95.0, 132.0], [1.0, 1.0, 481.0, 481.0]])]
    pooler = RoIPooler("roi_align", 7, strides, sampling_ratio=2, aligned=False)
    calls = []
    import fasterrcnn.modeling.pooler as pooler_module

    real = pooler_module.sparse_roi_align

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    pooler_module.sparse_roi_align = spy
    try:
        out = pooler(feats, boxes)
        with torch.no_grad():
            pooler(feats, boxes)
    finally:
        pooler_module.sparse_roi_align = real
    assert len(calls) == 3  # one call per level in training, none under no_grad
    levels = pooler_module.assign_levels(torch.cat(boxes), list(strides.values()))
    assert levels.tolist() == [0, 2, 1, 0, 2]  # every level is used
    # the same numbers from torchvision's op, RoI by RoI on the level assign_levels picks
    image = torch.tensor([0, 0, 1, 1, 1])
    flat = torch.cat(boxes)
    names = list(strides)
    ref = torch.cat([
        roi_align(feats[names[j]], torch.cat((image[i, None].float(), flat[i]))[None], 7,
                  1.0 / strides[names[j]], 2, aligned=False)
        for i, j in enumerate(levels.tolist())
    ])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), list(feats.values()))
    ref_grads = torch.autograd.grad((ref * weights).sum(), list(feats.values()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
