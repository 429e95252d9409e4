import pytest
import torch

from fasterrcnn.modeling.transform import InputTransform, pad_batch, resize_scale, resized_size, scale_boxes


def test_resize_scale_paper_rule():
    assert resize_scale(375, 500, 600, 1000) == pytest.approx(1.6)
    assert resize_scale(300, 1200, 600, 1000) == pytest.approx(1000 / 1200)
    assert resized_size(375, 500, 1.6) == (600, 800)


def test_scale_boxes_round_trip():
    b = torch.tensor([[10.0, 20, 30, 40]])
    up = scale_boxes(b, (100, 200), (150, 100))
    torch.testing.assert_close(up, torch.tensor([[5.0, 30, 15, 60]]))
    torch.testing.assert_close(scale_boxes(up, (150, 100), (100, 200)), b)


def test_pad_batch_divisible():
    batch = pad_batch([torch.ones(3, 10, 17), torch.ones(3, 20, 5)], 16)
    assert batch.shape == (2, 3, 32, 32)
    assert batch[0, :, :10, :17].eq(1).all() and batch[0, :, 10:].eq(0).all()


def test_transform_sizes_and_errors():
    t = InputTransform(min_size_train=(64,), max_size_train=100, min_size_test=32, max_size_test=50, pixel_mean=(0.5,) * 3, pixel_std=(0.25,) * 3)
    out = t([torch.full((3, 40, 80), 0.5), torch.rand(3, 50, 50)], training=True)
    assert out.image_sizes == [(50, 100), (64, 64)] and out.original_sizes == [(40, 80), (50, 50)]
    assert out.tensor[0, :, :50, :100].abs().max() < 1e-6  # normalised 0.5 -> 0
    assert t([torch.rand(3, 40, 80)], training=False).image_sizes == [(25, 50)]
    with pytest.raises(ValueError, match="float"):
        t([torch.zeros(3, 4, 4, dtype=torch.uint8)], training=False)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        t([torch.rand(4, 4)], training=False)
