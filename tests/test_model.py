"""Model: shapes, importance map, quantizer, and causality of the probability classifier."""

import itertools

import pytest
import torch

from imgcomp.nets.autoencoder import Autoencoder, importance_mask
from imgcomp.nets.probclass import ProbClassifier, causal_mask
from imgcomp.nets.quantizer import Quantizer


def test_autoencoder_shapes_and_range():
    torch.manual_seed(0)
    ae = Autoencoder(num_channels=8, n=16, num_groups=1)
    x = torch.rand(2, 3, 48, 40) * 255
    z, mask = ae.encode(x)
    assert z.shape == (2, 8, 6, 5) and mask.shape == (2, 8, 6, 5)
    x_hat = ae.decode(z)
    assert x_hat.shape == x.shape
    assert x_hat.min() >= 0 and x_hat.max() <= 255


def test_autoencoder_rejects_sizes_not_multiple_of_8():
    ae = Autoencoder(num_channels=4, n=8, num_groups=1)
    with pytest.raises(ValueError, match="multiple of 8"):
        ae.encode(torch.zeros(1, 3, 20, 24))


def test_importance_mask_values():
    # sigmoid(0) * C = C/2: channels below C/2 fully on, the rest off.
    mask = importance_mask(torch.zeros(1, 1, 2, 2), 4)
    assert torch.equal(mask[0, :, 0, 0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    # sigmoid(h) * 4 = 1.5 -> [1, 0.5, 0, 0]
    h = torch.logit(torch.tensor(1.5 / 4)).view(1, 1, 1, 1)
    assert torch.allclose(importance_mask(h, 4)[0, :, 0, 0], torch.tensor([1, 0.5, 0, 0]))


def test_heatmap_masks_bottleneck_channels():
    torch.manual_seed(0)
    ae = Autoencoder(num_channels=6, n=8, num_groups=1)
    z, mask = ae.encode(torch.rand(1, 3, 16, 16) * 255)
    assert torch.all(z[mask == 0] == 0)
    # The mask is non-increasing over channels.
    assert torch.all(mask[:, 1:] <= mask[:, :-1])


def test_quantizer_hard_forward_soft_gradient():
    torch.manual_seed(0)
    quantizer = Quantizer(6, (-2, 2))
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    q = quantizer(z)
    centers = quantizer.centers.detach()
    nearest = torch.argmin((z.detach().unsqueeze(-1) - centers).abs(), -1)
    assert torch.equal(q.symbols, nearest)
    assert torch.allclose(q.qbar, centers[nearest], atol=1e-6)
    assert torch.equal(q.qhard, centers[nearest])
    # Straight-through: d qbar / dz equals d qsoft / dz, which is non-zero.
    (g_bar,) = torch.autograd.grad(q.qbar.sum(), z, retain_graph=True)
    (g_soft,) = torch.autograd.grad(q.qsoft.sum(), z)
    assert torch.allclose(g_bar, g_soft) and g_bar.abs().sum() > 0
    assert torch.equal(quantizer.dequantize(q.symbols), q.qhard)


def test_masks():
    first, other = causal_mask(3, False), causal_mask(3, True)
    assert first.shape == (2, 3, 3)
    assert torch.all(first[0] == 1) and torch.all(other[0] == 1)
    assert torch.equal(first[1], torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 0, 0]]))
    assert torch.equal(other[1], torch.tensor([[1.0, 1, 1], [1, 1, 0], [0, 0, 0]]))


def _random_probclass(kernel_size=3, k=8, num_centers=6, num_res_blocks=1):
    torch.manual_seed(1)
    # Linear logits: a ReLU on random logits would hide some of what the masks let through.
    pc = ProbClassifier(num_centers, kernel_size, k, logits_relu=False,
                        num_res_blocks=num_res_blocks)
    for p in pc.parameters():  # make every weight matter
        torch.nn.init.normal_(p, std=0.5)
    return pc


def test_probclass_layers_keep_the_original_names():
    """Checkpoints, the shipped models and convert.py's TF variable map use these keys."""
    pc = ProbClassifier(6)
    assert list(pc.state_dict()) == [f"{name}.{p}" for name in
                                     ("conv_in", "res_conv1", "res_conv2", "conv_out")
                                     for p in ("weight", "bias")]
    assert [(layer.name, layer.conv.include_centre, layer.relu, layer.skip_from)
            for layer in pc.layers] == [("conv_in", False, True, None),
                                        ("res_conv1", True, True, None),
                                        ("res_conv2", True, False, 0),
                                        ("conv_out", True, True, None)]


def test_float_forward_is_the_described_network():
    """Two residual blocks, written out by hand, against the forward driven by `layers`."""
    pc = _random_probclass(k=8, num_res_blocks=2)
    assert [layer.name for layer in pc.layers] == [
        "conv_in", "res_conv1", "res_conv2", "res2_conv1", "res2_conv2", "conv_out"]
    assert pc.context_pad == 6 and pc.context_size == 13
    volume = pc.pad(torch.randn(2, 4, 5, 7), pad_value=-1.0)

    def crop(x):  # to 2 layers (of 3x3 kernels) later: 2 off the front and every side
        return x[:, :, 2:, 2:-2, 2:-2]

    x0 = torch.relu(pc.conv_in(volume))
    x2 = pc.res_conv2(torch.relu(pc.res_conv1(x0))) + crop(x0)
    x4 = pc.res2_conv2(torch.relu(pc.res2_conv1(x2))) + crop(x2)
    expected = pc.conv_out(x4)  # logits_relu=False
    with torch.no_grad():
        assert torch.equal(pc.logits_valid(volume), expected)
    assert expected.shape == (2, 6, 4, 5, 7)


def test_probclass_shapes_and_context():
    pc = _random_probclass()
    assert pc.context_size == 9 and pc.context_pad == 4
    q = torch.randn(2, 5, 7, 6)
    logits = pc(q, pad_value=-1.0)
    assert logits.shape == (2, 6, 5, 7, 6)
    bits = ProbClassifier.bitcost(logits, torch.randint(0, 6, (2, 5, 7, 6)))
    assert bits.shape == (2, 5, 7, 6) and torch.all(bits >= 0)


@pytest.mark.parametrize("kernel_size,num_res_blocks", [(3, 1), (5, 1), (3, 2)])
def test_probclass_is_causal(kernel_size, num_res_blocks):
    """Changing any symbol at or after (c, h, w) in coding order leaves its logits unchanged;
    changing the symbol just before it does change them (so the test can fail)."""
    pc = _random_probclass(kernel_size, num_res_blocks=num_res_blocks)
    centers = torch.linspace(-2, 2, 6)
    C, H, W = 4, 5, 6
    gen = torch.Generator().manual_seed(0)
    symbols = torch.randint(0, 6, (1, C, H, W), generator=gen)
    base = pc(centers[symbols], pad_value=float(centers[0]))
    order = list(itertools.product(range(C), range(H), range(W)))
    changed_before = 0
    with torch.no_grad():
        for i, (c, h, w) in enumerate(order):
            # Replace every symbol at or after position i with a different random one.
            flat = symbols.flatten().clone()
            flat[i:] = (flat[i:] + torch.randint(1, 6, (flat.numel() - i,), generator=gen)) % 6
            logits = pc(centers[flat.view_as(symbols)], float(centers[0]))
            assert torch.allclose(logits[0, :, c, h, w], base[0, :, c, h, w], atol=1e-5), \
                f"logits at {(c, h, w)} depend on symbols at or after it"
            if i > 0:
                flat = symbols.flatten().clone()
                flat[i - 1] = (flat[i - 1] + 1) % 6
                logits = pc(centers[flat.view_as(symbols)], float(centers[0]))
                changed_before += not torch.allclose(logits[0, :, c, h, w], base[0, :, c, h, w])
    # The previous symbol is in the context of nearly every position (not at row starts
    # where it is the end of the previous row, out of the 9-wide window for W > 5).
    assert changed_before >= len(order) - C * H
