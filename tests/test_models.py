"""The configurable UNet reproduces the paper's architectures; every variant trains a step."""

from __future__ import annotations

import pytest
import torch

from temseg_ablation.models import (
    OneFilterCNN,
    ShallowWideCNN,
    UNet,
    build_model,
    count_parameters,
    pad_to_multiple,
    paper_plan,
)


def unet(depth: int = 4, **kw) -> UNet:
    plan = paper_plan(depth)
    return build_model("unet", encoder_channels=plan.encoder, decoder_channels=plan.decoder,
                       head_channels=plan.head, **kw)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, 86_138),  # leaky ReLU, no norm, no extra conv
        ({"norm": "batch"}, 86_590),  # "Norm"
        ({"norm": "batch", "extra_conv": True}, 222_046),  # "TwoConv_Norm"
        ({"extra_conv": True}, 221_146),  # "TwoConv"
    ],
)
def test_paper_parameter_counts_depth4(kwargs, expected):
    assert count_parameters(unet(4, activation="leaky_relu", **kwargs)) == expected


def test_paper_512_model_parameter_count():
    assert count_parameters(unet(3, activation="relu", norm="none")) == 16_002


def test_shallow_wide_parameter_count_and_one_filter():
    assert count_parameters(ShallowWideCNN()) == 2_690
    assert count_parameters(OneFilterCNN(9)) == 82
    assert count_parameters(OneFilterCNN(7)) == 50


def test_paper_plans():
    assert paper_plan(4).encoder == (8, 16, 32, 64)
    assert paper_plan(4).decoder == (32, 32, 16, 16)
    assert paper_plan(3).head is None
    assert len(paper_plan(5).encoder) == 5


def test_activation_before_norm_order():
    """The paper applies the activation before batch norm: bn(act(conv(x)))."""
    net = unet(4, norm="batch", activation="relu")
    unit = net.encoder[0]
    x = torch.randn(2, 1, 16, 16)
    manual = unit.norm(torch.relu(unit.conv(x)))
    torch.testing.assert_close(unit(x), manual)


def test_output_activation_switch_makes_dead_outputs_possible():
    torch.manual_seed(0)
    with_act = unet(4, activation="relu", norm="none", output_activation=True)
    without = unet(4, activation="relu", norm="none", output_activation=False)
    with torch.no_grad():
        with_act.out_conv.bias.fill_(-100.0)  # force negative pre-activations
        without.out_conv.bias.fill_(-100.0)
        x = torch.rand(1, 1, 32, 32)
        assert (with_act(x) == 0).all()
        assert (without(x) < 0).all()


@pytest.mark.parametrize("arch", ["unet", "hourglass"])
@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("depth", [3, 4, 5])
def test_forward_backward_shapes(arch, kernel, depth):
    plan = paper_plan(depth)
    net = build_model(arch, encoder_channels=plan.encoder, decoder_channels=plan.decoder,
                      head_channels=plan.head, kernel_size=kernel, norm="batch", extra_conv=True)
    x = torch.rand(2, 1, 64, 32)
    out = net(x)
    assert out.shape == (2, 2, 64, 32)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_hourglass_has_no_skips_and_fewer_parameters():
    assert count_parameters(build_model("hourglass")) < count_parameters(build_model("unet"))


def test_fully_convolutional_any_allowed_size():
    net = unet(4, norm="batch").eval()
    for shape in [(16, 16), (48, 80), (128, 96)]:
        assert net(torch.rand(1, 1, *shape)).shape[-2:] == shape


def test_bad_input_size_gives_clear_error():
    net = unet(4)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.rand(1, 1, 100, 64))
    with pytest.raises(ValueError, match=r"\(batch, channel, H, W\)"):
        net(torch.rand(1, 64, 64))


def test_pad_to_multiple_roundtrip():
    x = torch.rand(1, 1, 100, 70)
    padded, (h, w) = pad_to_multiple(x, 16)
    assert padded.shape[-2:] == (112, 80)
    torch.testing.assert_close(padded[..., :h, :w], x)
    assert unet(4)(padded).shape[-2:] == (112, 80)


def test_unknown_choices_are_refused():
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet")
    with pytest.raises(ValueError, match="unknown norm"):
        unet(4, norm="group")
    with pytest.raises(ValueError, match="unknown activation"):
        unet(4, activation="gelu")
    with pytest.raises(ValueError, match="odd"):
        unet(4, kernel_size=4)


def test_shallow_kernels_are_images():
    assert OneFilterCNN(9).kernels().shape == (1, 9, 9)
    assert ShallowWideCNN(kernel_size=7).kernels().shape == (32, 7, 7)
    out = OneFilterCNN(9)(torch.rand(1, 1, 20, 30))
    assert out.shape == (1, 2, 20, 30)
    assert (out[:, 0] == 0).all()  # fixed background logit: softmax is a logistic of the filter
