"""The config keys that choose between the original's graph and training and the port's former
choices (ae_configs/base, pc_configs/base; docs/faithfulness.md, "Config keys that choose")."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.codec.image_codec import ImageCodec
from imgcomp.config.parsing import Config, load_config
from imgcomp.nets.autoencoder import Autoencoder, Conv2dSame, ConvTranspose2dSame
from imgcomp.nets.probclass import ProbClassifier
from imgcomp.train import optimization
from imgcomp.train.losses import compute_loss

ROOT = Path(__file__).resolve().parents[1]


def _with(cfg: Config, **changes) -> Config:
    return Config(cfg.to_dict() | changes, cfg.source_path)


def test_base_configs_are_the_original_and_cpu_gpu_the_shipped_recipe():
    original = {"tf_same_padding": True, "bottleneck_output_bn": True, "weight_init": "xavier",
                "random_flip": True, "train_ms_ssim": "graph", "adam_epsilon": "tf1",
                "epoch_steps": "floor", "output_uint8": "truncate"}
    original_pc = {"logits_relu": True, "objective": "total_loss", "weight_init": "xavier",
                   "adam_epsilon": "tf1"}
    for name in ("cvpr/low", "cvpr/med", "cvpr/hi"):
        cfg = load_config(ROOT / "ae_configs" / name)
        assert {k: cfg[k] for k in original} == original, name
    pc = load_config(ROOT / "pc_configs/cvpr/res_shallow")
    assert {k: pc[k] for k in original_pc} == original_pc
    # The shipped models' recipe: the port's choices but the A/B's winner, BatchNorm at
    # to_bn / h13 (docs/faithfulness.md).
    recipe = ckpt.LEGACY_AE_KEYS | {"bottleneck_output_bn": True}
    for name in ("cpu/med", "gpu/med", "gpu/hi_long_c192"):
        cfg = load_config(ROOT / "ae_configs" / name)
        assert {k: cfg[k] for k in recipe} == recipe, name
    for name in ("cpu/res_shallow", "gpu/res_shallow", "gpu/res_shallow_long"):
        cfg = load_config(ROOT / "pc_configs" / name)
        assert {k: cfg[k] for k in ckpt.LEGACY_PC_KEYS} == ckpt.LEGACY_PC_KEYS, name


def test_log_dirs_older_than_the_keys_get_the_port_choices(tmp_path, tiny_configs):
    ae_cfg, pc_cfg = tiny_configs
    ckpt_dir = tmp_path / "0101_0000 a b" / "ckpts"
    ckpt_dir.mkdir(parents=True)
    old_ae = {k: v for k, v in ae_cfg.items() if k not in ckpt.LEGACY_AE_KEYS}
    old_pc = {k: v for k, v in pc_cfg.items() if k not in ckpt.LEGACY_PC_KEYS}
    ckpt.write_configs(ckpt_dir, Config(old_ae), Config(old_pc))
    ae_read, pc_read = ckpt.read_configs(ckpt_dir)
    assert {k: ae_read[k] for k in ckpt.LEGACY_AE_KEYS} == ckpt.LEGACY_AE_KEYS
    assert {k: pc_read[k] for k in ckpt.LEGACY_PC_KEYS} == ckpt.LEGACY_PC_KEYS


def _reference_same_conv(x, weight, stride):
    """TF 'SAME' written out: total padding max((ceil(n/s)-1)*s + k - n, 0), less before."""
    k, n = weight.shape[-1], x.shape[-1]
    total = max((math.ceil(n / stride) - 1) * stride + k - n, 0)
    x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    return F.conv2d(x, weight, stride=stride)


@pytest.mark.parametrize("size", [8, 9, 16])
def test_tf_same_conv_pads_asymmetrically(size):
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, 5, 2, bias=False)
    x = torch.randn(1, 2, size, size)
    assert torch.allclose(conv(x), _reference_same_conv(x, conv.weight, 2), atol=1e-6)
    if size % 2 == 0:  # 1 before, 2 after: not PyTorch's symmetric padding
        assert not torch.allclose(conv(x), F.conv2d(x, conv.weight, stride=2, padding=2))


@pytest.mark.parametrize("kernel", [3, 5])
def test_tf_same_transposed_conv_is_the_adjoint_of_the_same_conv(kernel):
    # TF's conv2d_transpose is the gradient of conv2d 'SAME': <convT(y), x> = <y, conv(x)>.
    torch.manual_seed(0)
    convt = ConvTranspose2dSame(3, 2, kernel, 2, bias=False)
    y, x = torch.randn(1, 3, 4, 5), torch.randn(1, 2, 8, 10)
    out = convt(y)
    assert out.shape == (1, 2, 8, 10)
    # The forward conv uses the same weight seen as (out = 3, in = 2).
    forward = _reference_same_conv(x, convt.weight, 2)
    assert forward.shape == y.shape
    assert float((out * x).sum()) == pytest.approx(float((y * forward).sum()), rel=1e-4)


def test_bottleneck_output_bn_and_init():
    ae = Autoencoder(num_channels=4, n=8, num_groups=1)
    names = dict(ae.named_parameters())
    assert "encoder.out.bias" not in names and "encoder.out_bn.weight" in names
    assert "decoder.tail.1.bias" not in names and "decoder.tail.2.weight" in names
    # Glorot uniform: |w| <= sqrt(6 / (fan_in + fan_out)), and it reaches near the bound.
    w = ae.encoder.out.weight
    bound = math.sqrt(6 / ((w.shape[0] + w.shape[1]) * 25))
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.9 * bound
    port = Autoencoder(num_channels=4, n=8, num_groups=1, tf_same_padding=False,
                       bottleneck_output_bn=False, weight_init="torch")
    port_names = dict(port.named_parameters())
    assert "encoder.out.bias" in port_names and "decoder.tail.1.bias" in port_names
    assert float(port_names["encoder.out.bias"].abs().sum()) > 0  # PyTorch's biases are random
    pc = ProbClassifier(6, 3, 8)
    assert all(float(m.bias.abs().sum()) == 0 for m in (pc.conv_in, pc.conv_out))


def test_logits_relu():
    torch.manual_seed(0)
    q = torch.randn(1, 3, 4, 4)
    relu, linear = ProbClassifier(6, 3, 8), ProbClassifier(6, 3, 8, logits_relu=False)
    linear.load_state_dict(relu.state_dict())
    a, b = relu(q, -1.0), linear(q, -1.0)
    assert torch.equal(a, b.clamp_min(0)) and (b < 0).any()


def test_output_uint8_truncates_or_rounds(tiny_configs):
    ae_cfg, pc_cfg = tiny_configs
    x_hat = torch.tensor([0.4, 0.6, 254.7, 255.0])
    truncating = ImageCodec.from_configs(ae_cfg, pc_cfg)
    rounding = ImageCodec.from_configs(_with(ae_cfg, output_uint8="round"), pc_cfg)
    assert truncating.to_uint8(x_hat).tolist() == [0, 0, 254, 255]
    assert rounding.to_uint8(x_hat).tolist() == [0, 1, 255, 255]


def test_tf1_adam_adds_epsilon_before_the_bias_correction():
    for cls, denominator in ((optimization.TF1Adam, lambda g, t: abs(g) + 1e-8 / math.sqrt(
            1 - 0.999**t)), (torch.optim.Adam, lambda g, t: abs(g) + 1e-8)):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = cls([p], lr=1.0)
        g = 1e-7  # small enough for the epsilons to matter
        p.grad = torch.full((1,), g)
        opt.step()
        # First step: m_hat = g, v_hat = g^2; the update is g / denominator.
        assert float(p) == pytest.approx(-g / denominator(g, 1), rel=1e-4), cls.__name__


def test_epoch_steps_floor_or_exact(tiny_configs):
    cfg = tiny_configs[0]  # batch_size 4
    assert optimization.steps_per_epoch(cfg, 10, 1) == 2
    assert optimization.steps_per_epoch(_with(cfg, epoch_steps="exact"), 10, 1) == 2.5


def test_probclass_objective(tiny_configs):
    """The original trains the probclass by the rate term only (nothing while H_soft is
    below H_target); 'H_real' trains it on its cross-entropy."""
    torch.manual_seed(0)
    ae_cfg, pc_cfg = tiny_configs
    x = torch.rand(2, 3, 32, 32) * 255
    for objective, target, expect_grad in (("total_loss", 100.0, False),
                                           ("total_loss", 0.0, True),
                                           ("H_real", 100.0, True)):
        ae = _with(ae_cfg, H_target=target)
        pc = _with(pc_cfg, objective=objective)
        model = ImageCodec.from_configs(ae, pc).train()
        terms = compute_loss(model, model(x), x, ae, pc)
        terms.total.backward()
        grad = model.probclass.conv_out.weight.grad
        has_grad = grad is not None and float(grad.abs().sum()) > 0
        assert has_grad == expect_grad, (objective, target)
