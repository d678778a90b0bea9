"""The configurable UNet reproduces the paper's architectures; every variant trains a step."""

from __future__ import annotations

import pytest
import torch

from temseg_ablation.models import (
    EncoderDecoderCNN,
    OneFilterCNN,
    ShallowWideCNN,
    UNet,
    build_model,
    count_parameters,
    level_widths,
    pad_to_multiple,
    paper_512_plan,
    paper_plan,
)


def unet(depth: int = 4, **kw) -> UNet:
    plan = paper_plan(depth)
    return build_model("unet", encoder_channels=plan.encoder, decoder_channels=plan.decoder,
                       head_channels=plan.head, **kw)


def unet_512(**kw) -> UNet:
    plan = paper_512_plan()
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
    assert count_parameters(unet_512(activation="relu", norm="none")) == 16_002


def test_shallow_wide_parameter_count_and_one_filter():
    assert count_parameters(ShallowWideCNN()) == 2_690
    assert count_parameters(OneFilterCNN(9)) == 82
    assert count_parameters(OneFilterCNN(7)) == 50


def test_paper_plans():
    assert paper_plan(4).encoder == (8, 16, 32, 64)
    assert paper_plan(4).decoder == (32, 32, 16, 16)
    assert paper_plan(4).head == 8
    assert paper_512_plan().decoder == (16, 8, 8) and paper_512_plan().head is None
    assert paper_plan(3).encoder == (8, 16, 32) and paper_plan(3).decoder == (32, 16, 16)
    assert paper_plan(5).encoder == (8, 16, 32, 64, 128)
    assert paper_plan(5).decoder == (64, 32, 32, 16, 16)


def _top_level_shapes(net: UNet) -> dict[str, torch.Size]:
    """Weight shapes of the full-resolution level: input conv, last upsampling conv, head, output."""
    prefixes = {"encoder.0.": "enc.", f"decoder.{net.depth - 1}.": "dec.", "head.": "head.",
                "out_conv.": "out."}
    shapes = {alias + k[len(p):]: v.shape for k, v in net.state_dict().items()
              for p, alias in prefixes.items() if k.startswith(p)}
    assert len(shapes) >= 8  # weight + bias of four convs at least
    return shapes


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_depth_varies_alone(norm):
    """Depth 3/4/5 share the widths of their common levels and the head; only levels change."""
    nets = {d: build_model("unet", depth=d, norm=norm) for d in (3, 4, 5)}
    counts = {d: count_parameters(n) for d, n in nets.items()}
    assert counts[3] < counts[4] < counts[5]
    assert counts[4] == (86_590 if norm == "batch" else 86_138)  # the paper's model untouched
    for shallow, deep in ((3, 4), (4, 5), (3, 5)):
        a, b = nets[shallow].plan, nets[deep].plan
        assert b.encoder[:shallow] == a.encoder  # same encoder widths, level by level
        assert b.decoder[-shallow:] == a.decoder  # same decoder widths (listed bottom to top)
        assert a.head == b.head == 8
        assert _top_level_shapes(nets[shallow]) == _top_level_shapes(nets[deep])
    assert [level_widths(i) for i in range(4)] == [(8, 16), (16, 16), (32, 32), (64, 32)]
    for d, net in nets.items():
        x = torch.rand(1, 1, 2**d * 2, 2**d * 3)
        assert net(x).shape == (1, 2, 2**d * 2, 2**d * 3)
        assert net.input_multiple == 2**d


@pytest.mark.parametrize(("depth", "expected"), [(3, 31_006), (4, 86_590), (5, 271_486)])
def test_norm_parameter_counts_by_depth(depth, expected):
    # depth 3 by hand: convs 80+1,168+4,640, transposed 9,248+9,232+4,624, head 1,736, out 18,
    # batch norm 2 x (8+16+32+32+16+16+8+2) = 260: 31,006.
    assert count_parameters(build_model("unet", depth=depth, norm="batch")) == expected


def test_depth_argument_agrees_with_explicit_channels():
    plan = paper_plan(4)
    explicit = dict(encoder_channels=plan.encoder, decoder_channels=plan.decoder,
                    head_channels=plan.head)
    assert count_parameters(build_model("unet", depth=4, **explicit)) == 86_138
    with pytest.raises(ValueError, match="depth=5 contradicts"):
        build_model("unet", depth=5, **explicit)  # a lone net.depth=5 override


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


@pytest.mark.parametrize("arch", ["unet", "unet_noskip"])
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


def test_unet_noskip_has_no_skips_and_fewer_parameters():
    assert count_parameters(build_model("unet_noskip")) < count_parameters(build_model("unet"))
    assert count_parameters(build_model("unet_noskip", norm="batch")) == 60_670
    assert build_model("unet_noskip").skips is False


def test_hourglass_is_a_deprecated_alias_of_unet_noskip(caplog):
    torch.manual_seed(0)
    with pytest.warns(FutureWarning, match="'hourglass' is deprecated.*unet_noskip"):
        old = build_model("hourglass", norm="batch")
    assert "deprecated" in caplog.text  # also in the job log, not only on stderr
    torch.manual_seed(0)
    new = build_model("unet_noskip", norm="batch")
    assert old.skips is False and count_parameters(old) == count_parameters(new)
    old.load_state_dict(new.state_dict())  # old checkpoints load into the new name and back


def test_encoder_decoder_is_the_papers_hourglass():
    net = build_model("encoder_decoder")
    assert isinstance(net, EncoderDecoderCNN)
    assert count_parameters(net) == 35_848
    kernels = [m.kernel_size for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert kernels[:2] == [(20, 20), (10, 10)]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert net.kernels().shape == (8, 20, 20)
    for shape in [(8, 8), (64, 40), (96, 128)]:
        x = torch.rand(2, 1, *shape, requires_grad=True)
        out = net(x)
        assert out.shape == (2, 2, *shape)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 1, 60, 64))


@pytest.mark.parametrize("k", [20, 10, 3])
def test_same_padding_matches_symmetric_padding_then_floor_pool(k):
    """The even-kernel 'same' padding reproduces the paper's pad-k//2-both-sides + floor pooling."""
    torch.manual_seed(0)
    ours = EncoderDecoderCNN().encoder[{20: 0, 10: 1, 3: 2}[k]]
    cin = ours.conv.in_channels
    ref = torch.nn.Conv2d(cin, ours.conv.out_channels, k, padding=k // 2)
    ref.load_state_dict(ours.conv.state_dict())
    x = torch.rand(2, cin, 24, 32)
    assert ours(x).shape[-2:] == (24, 32)
    pool = torch.nn.MaxPool2d(2, 2)
    torch.testing.assert_close(pool(ours(x)), pool(ref(x)))


def test_encoder_decoder_output_is_linear_by_default():
    net = build_model("encoder_decoder")
    with torch.no_grad():
        net.out_mix.bias.fill_(-100.0)
    assert (net(torch.rand(1, 1, 16, 16)) < 0).all()  # no ReLU clips the logits


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


def test_unknown_model_argument_raises_naming_it():
    with pytest.raises(TypeError, match=r"'kernal_size' \(did you mean 'kernel_size'\?\)") as err:
        build_model("unet", kernal_size=7)
    assert "'kernel_size'" in str(err.value).split("accepts")[1]  # lists what is accepted
    with pytest.raises(TypeError, match="'bogus'.*arch 'encoder_decoder'"):
        build_model("encoder_decoder", bogus=1)
    # a key another architecture takes is not an error: one net config describes all archs
    assert count_parameters(build_model("shallow_wide", encoder_channels=[8], norm="batch")) == 2_690


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


# --- the conf/arch and conf/depth options that build these networks ---------------------------


def _compose_and_build(overrides: list[str]):
    from temseg_ablation.app.build import build_net

    from .conftest import compose_cfg

    cfg = compose_cfg(overrides)
    return cfg, build_net(cfg)


@pytest.mark.parametrize("model", ["norm", "twoconv_norm"])
def test_encoder_decoder_config(model):
    cfg, net = _compose_and_build([f"model={model}", "arch=encoder_decoder"])
    assert isinstance(net, EncoderDecoderCNN) and count_parameters(net) == 35_848
    assert cfg.variant == "encoder_decoder"
    assert cfg.net.norm == "none" and cfg.net.activation == "relu"  # the logged config is honest
    assert cfg.net.output_activation is False


def test_unet_noskip_and_deprecated_hourglass_configs():
    _, noskip = _compose_and_build(["arch=unet_noskip"])
    assert count_parameters(noskip) == 60_670 and noskip.skips is False
    with pytest.warns(FutureWarning, match="deprecated"):
        _, old = _compose_and_build(["arch=hourglass"])
    assert count_parameters(old) == 60_670 and old.skips is False


@pytest.mark.parametrize(("depth", "expected"), [("3", 31_006), ("4", 86_590), ("5", 271_486)])
def test_depth_config_changes_depth_alone(depth, expected):
    cfg, net = _compose_and_build(["model=norm", f"depth={depth}"])
    assert net.depth == int(depth) == cfg.net.depth
    assert net.plan == paper_plan(int(depth))
    assert count_parameters(net) == expected


def test_paper_512_depth_config():
    cfg, net = _compose_and_build(["depth=paper512", "activation=relu", "norm=none"])
    assert net.plan == paper_512_plan() and count_parameters(net) == 16_002
