import pytest
import torch

from dcgan.models import Generator, build_models, layout


@pytest.mark.parametrize("size", [28, 32, 64])
def test_shapes_for_every_image_size(size):
    G, D = build_models(size, nz=100, ngf=16, ndf=16)
    images = G(torch.randn(5, 100))
    assert images.shape == (5, 1, size, size)
    assert isinstance(G.main[-1], torch.nn.Tanh)             # the output layer: same range as the data
    with torch.no_grad():
        for module in G.modules():                           # drive the output far past +-1 before the Tanh
            if isinstance(module, torch.nn.ConvTranspose2d):
                module.weight.mul_(100)
        saturated = G(torch.randn(5, 100))
    assert saturated.abs().max() <= 1 and saturated.abs().max() > 0.99
    logits = D(images)
    assert logits.shape == (5,)                              # one logit per image, no sigmoid
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in D.modules())  # logits: the loss applies the sigmoid


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("g_extra, d_extra", [(0, 0), (1, 0), (0, 2), (2, 1)])
def test_extra_layers_keep_shapes_and_add_same_size_convolutions(size, g_extra, d_extra):
    torch.manual_seed(0)
    G, D = build_models(size, nz=16, ngf=8, ndf=8, g_extra=g_extra, d_extra=d_extra)
    plain_g, plain_d = build_models(size, nz=16, ngf=8, ndf=8)
    images = G(torch.randn(3, 16))
    assert images.shape == (3, 1, size, size) and D(images).shape == (3,)
    same_size = lambda net: [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (1, 1)
                             and m.kernel_size == (3, 3)]
    assert len(same_size(G)) == g_extra and len(same_size(D)) == d_extra
    assert len(list(G.modules())) == len(list(plain_g.modules())) + 3 * g_extra    # conv + BN + activation each
    assert len(list(D.modules())) == len(list(plain_d.modules())) + 3 * d_extra
    # the extra convolutions run at the resolution next to the image: G's last feature map, D's first
    if g_extra:
        assert same_size(G)[0].in_channels == 8 and isinstance(G.main[-2], torch.nn.ConvTranspose2d)
    if d_extra:
        assert same_size(D)[0].in_channels == 8 and D.main[2] is same_size(D)[0]


def test_depth_follows_image_size():
    assert layout(64) == (4, 4) and layout(32) == (4, 3) and layout(28) == (7, 2)
    n_transposed = lambda g: sum(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())
    assert n_transposed(Generator(64)) == 5 and n_transposed(Generator(32)) == 4 and n_transposed(Generator(28)) == 3
    with pytest.raises(ValueError):
        layout(48)


def test_paper_architecture_at_64():
    G, D = build_models(64, nz=100, ngf=64, ndf=64)
    widths = [m.out_channels for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert widths == [512, 256, 128, 64, 1]
    assert [m.out_channels for m in D.modules() if isinstance(m, torch.nn.Conv2d)] == [64, 128, 256, 512, 1]
    first_bn = [type(m) for m in D.main][:3]
    assert torch.nn.BatchNorm2d not in first_bn[:2]          # no BN on D's input layer


def test_init_statistics():
    torch.manual_seed(0)
    G, D = build_models(64, nz=100, ngf=64, ndf=64)
    convs = torch.cat([m.weight.flatten() for m in list(G.modules()) + list(D.modules())
                       if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))])
    assert abs(convs.mean().item()) < 1e-3 and abs(convs.std().item() - 0.02) < 1e-3
    bns = [m for m in list(G.modules()) + list(D.modules()) if isinstance(m, torch.nn.BatchNorm2d)]
    scales = torch.cat([m.weight for m in bns])
    assert abs(scales.mean().item() - 1) < 5e-3 and abs(scales.std().item() - 0.02) < 5e-3
    assert all(torch.all(m.bias == 0) for m in bns)


def test_ema_update_averages_parameters_only():
    from dcgan.train.ema import make_ema, update_ema
    G, _ = build_models(28, nz=16, ngf=8, ndf=8)
    ema = make_ema(G)
    before = [p.clone() for p in ema.parameters()]
    buffers = [b.clone() for b in ema.buffers()]
    G.train()(torch.randn(8, 16))                           # BatchNorm running statistics move
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    update_ema(ema, G, decay=0.999, step=10**6)             # the ramp is over: decay 0.999
    for old, new, current in zip(before, ema.parameters(), G.parameters()):
        assert torch.allclose(new, 0.999 * old + 0.001 * current, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(ema.buffers(), buffers))    # G's statistics are not the EMA's


def test_ema_batchnorm_statistics_are_computed_for_its_own_weights():
    """Averaging shrinks weights that training rotates; with G's BatchNorm statistics copied in, the EMA's eval
    output then drifts from what its own weights produce (grey samples). Calibrated statistics fit its weights."""
    import copy
    from dcgan.train.ema import calibrate_batchnorm, make_ema
    torch.manual_seed(0)
    G, _ = build_models(32, nz=16, ngf=8, ndf=8)
    noise = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    calibrate_batchnorm(G, noise, 64)                       # G's statistics, for G's weights
    ema = make_ema(G)
    with torch.no_grad():
        for m in ema.modules():
            if isinstance(m, torch.nn.ConvTranspose2d):
                m.weight.mul_(0.5)

    def gap_to_own_batch_statistics() -> float:
        with torch.no_grad():
            return (ema.eval()(noise) - copy.deepcopy(ema).train()(noise)).abs().max().item()

    copied = gap_to_own_batch_statistics()
    rng = torch.get_rng_state()
    assert calibrate_batchnorm(ema, noise, 64) is ema and not ema.training
    assert torch.equal(torch.get_rng_state(), rng)          # the training's random stream is untouched
    calibrated = gap_to_own_batch_statistics()
    print(f"max |eval - own batch statistics| output gap: copied {copied:.3f}, calibrated {calibrated:.4f}")
    assert copied > 0.1 and calibrated < copied / 10
