import math

import pytest
import torch

from fasterrcnn.config import Config, ConfigError, SemanticConfig, from_dict, override
from fasterrcnn.modeling.faster_rcnn import build_model
from fasterrcnn.modeling.semantic import IGNORE, SemanticHead, box_label_map, semantic_loss
from fasterrcnn.presets import preset

X = IGNORE


def test_box_label_map_smallest_box_wins_and_padding_is_ignored() -> None:
    # stride 8: cell centres at 4, 12, 20, 28; image 24 x 32 inside a 4 x 4 grid (row 3 padded)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 32.0, 24.0]])
    labels = torch.tensor([2, 3])
    out = box_label_map(boxes, labels, (24, 32), (4, 4), 8)
    expected = torch.tensor([
        [2, 2, 0, 0],
        [2, 2, 3, 3],  # (1, 1) lies in both: the 16 x 16 box (area 256) beats 24 x 16 (384)
        [0, 3, 3, 3],
        [X, X, X, X],
    ])
    assert torch.equal(out, expected)


def test_box_label_map_tiny_box_claims_the_cell_under_its_centre() -> None:
    # x 17..19 and y 1..3 hold no cell centre; its centre (18, 2) lies in cell (0, 2)
    out = box_label_map(torch.tensor([[17.0, 1.0, 19.0, 3.0]]), torch.tensor([5]), (16, 32), (2, 4), 8)
    assert torch.equal(out, torch.tensor([[0, 0, 5, 0], [0, 0, 0, 0]]))


def test_box_label_map_without_boxes_is_background_inside_the_image() -> None:
    out = box_label_map(torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), (8, 16), (2, 3), 8)
    assert torch.equal(out, torch.tensor([[0, 0, X], [X, X, X]]))


def test_box_label_map_box_inside_a_ring_like_box_keeps_its_own_cells() -> None:
    big = [0.0, 0.0, 40.0, 40.0]
    small = [14.0, 14.0, 26.0, 26.0]  # holds the centre 20 only
    out = box_label_map(torch.tensor([small, big]), torch.tensor([4, 5]), (40, 40), (5, 5), 8)
    assert out[2, 2] == 4
    assert (out == 5).sum() == 24


def test_semantic_loss_hand_computed() -> None:
    logits = torch.zeros((1, 3, 2, 2), requires_grad=True)
    targets = torch.tensor([[[0, 1], [2, X]]])
    loss = semantic_loss(logits, targets)
    assert loss.item() == pytest.approx(math.log(3.0), abs=1e-6)
    # one confident right cell: log-softmax of (5, 0, 0) at class 0 is -log(1 + 2 e^-5)
    logits2 = torch.zeros((1, 3, 1, 1))
    logits2[0, 0] = 5.0
    assert semantic_loss(logits2, torch.tensor([[[0]]])).item() == pytest.approx(
        math.log(1 + 2 * math.exp(-5.0)), abs=1e-6
    )


def test_semantic_loss_with_nothing_labelled_is_zero_with_a_graph() -> None:
    logits = torch.randn((2, 3, 2, 2), requires_grad=True)
    loss = semantic_loss(logits, torch.full((2, 2, 2), X))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_semantic_head_learns_the_labels() -> None:
    torch.manual_seed(0)
    head = SemanticHead(8, 2, stride=8, conv_channels=16, loss_weight=1.0)
    features = torch.randn((2, 8, 4, 4))
    boxes = [torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([[8.0, 8.0, 32.0, 32.0]])]
    labels = [torch.tensor([1]), torch.tensor([2])]
    sizes = [(32, 32), (24, 32)]
    opt = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9)
    first = head.loss(features, sizes, boxes, labels).item()
    for _ in range(100):
        opt.zero_grad()
        loss = head.loss(features, sizes, boxes, labels)
        loss.backward()
        opt.step()
    assert first == pytest.approx(math.log(3.0), abs=0.05)  # near-zero init: uniform logits
    assert loss.item() < 0.1 * first


def test_semantic_config_validates_and_defaults_off() -> None:
    assert SemanticConfig().loss_weight == 0.0
    with pytest.raises(ConfigError, match="semantic"):
        SemanticConfig(loss_weight=-1.0)
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(Config, {"model": {"semantic": {"weight": 1.0}}})
    assert build_model(preset("tiny-shapes").model).semantic is None


def _images_and_targets() -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(1)
    images = [torch.rand((3, 96, 128), generator=g), torch.rand((3, 112, 80), generator=g)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [30.0, 30.0, 50.0, 44.0]]),
         "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[5.0, 5.0, 40.0, 90.0]]), "labels": torch.tensor([5])},
    ]
    return images, targets


def test_model_with_semantic_head_adds_its_loss_and_predicts_as_without() -> None:
    cfg = override(preset("tiny-shapes"), {"model.test_aug.hflip": False, "model.test_aug.vflip": False,
                                           "model.test_aug.transpose": False})
    torch.manual_seed(0)
    plain = build_model(cfg.model)
    torch.manual_seed(0)
    aux = build_model(override(cfg, {"model.semantic.loss_weight": 0.5,
                                     "model.semantic.conv_channels": 16}).model)
    assert isinstance(aux.semantic, SemanticHead)
    shared = plain.state_dict()
    assert all(torch.equal(v, aux.state_dict()[k]) for k, v in shared.items())
    assert {k for k in aux.state_dict() if k not in shared} == {
        "semantic.body.0.weight", "semantic.body.0.bias", "semantic.logits.weight", "semantic.logits.bias"
    }
    images, targets = _images_and_targets()
    a, b = plain.predict(images), aux.predict(images)  # (before a loss call moves BN statistics)
    for x, y in zip(a, b):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["scores"], y["scores"])
    losses = aux.loss(images, targets)
    assert set(losses) == {"rpn_cls", "rpn_reg", "roi_cls", "roi_reg", "semantic"}
    # near-zero init: uniform over the 6 classes, times the weight
    assert losses["semantic"].item() == pytest.approx(0.5 * math.log(6.0), abs=0.01)
    sum(losses.values()).backward()
    assert aux.semantic.logits.weight.grad is not None
    assert next(aux.backbone.parameters()).grad.abs().sum() > 0


def test_alternating_steps_train_the_semantic_head_with_the_shared_convs() -> None:
    from fasterrcnn.engine.alternating import STEP_TRAINED, set_trainable

    cfg = override(preset("tiny-shapes"), {"model.semantic.loss_weight": 1.0})
    for step, trained in zip(range(1, 5), (True, True, False, False)):
        model = build_model(cfg.model)
        set_trainable(model, STEP_TRAINED[step - 1])
        assert all(p.requires_grad == trained for p in model.semantic.parameters()), step
    plain = build_model(preset("tiny-shapes").model)  # no head: nothing to freeze
    set_trainable(plain, STEP_TRAINED[2])
    assert not any(p.requires_grad for p in plain.backbone.parameters())
