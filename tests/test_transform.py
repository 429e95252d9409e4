import pytest
import torch

from fasterrcnn.modeling.transform import (
    InputTransform, Orientation, pad_batch, resize_scale, resized_size, scale_boxes, transpose_boxes,
    vflip_boxes,
)


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


ORIENTATIONS = [Orientation(t, h, v) for t in (False, True) for h in (False, True) for v in (False, True)]


def test_flip_and_transpose_boxes_exact() -> None:
    boxes = torch.tensor([[10.0, 5, 30, 25]])
    assert vflip_boxes(boxes, 40).tolist() == [[10.0, 15, 30, 35]]
    assert transpose_boxes(boxes).tolist() == [[5.0, 10, 25, 30]]
    # H 40, W 100: transposed the image is 100 x 40; mirrored there, x' = 40 - y
    o = Orientation(transpose=True, hflip=True)
    assert o.size((40, 100)) == (100, 40)
    assert o.boxes(boxes, (40, 100)).tolist() == [[15.0, 10, 35, 30]]


@pytest.mark.parametrize("o", ORIENTATIONS)
def test_orientation_moves_boxes_with_the_pixels(o: Orientation) -> None:
    """A box drawn on an image lands where the oriented image has it; inverse_boxes undoes it."""
    h, w = 30, 50
    image = torch.zeros(1, h, w)
    box = torch.tensor([[7.0, 3, 19, 11]])  # x1, y1, x2, y2
    image[:, 3:11, 7:19] = 1.0
    out = o.image(image)
    assert tuple(out.shape[-2:]) == o.size((h, w))
    x1, y1, x2, y2 = o.boxes(box, (h, w))[0].int().tolist()
    assert out[:, y1:y2, x1:x2].sum() == out.sum() == (y2 - y1) * (x2 - x1)  # exactly the box's pixels
    torch.testing.assert_close(o.inverse_boxes(o.boxes(box, (h, w)), (h, w)), box)
    assert o.identity == (o == Orientation())
