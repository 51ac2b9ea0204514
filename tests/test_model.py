import pytest
import torch

from pyramidrepro.config.model_shape import block_widths, blocks_per_stage
from pyramidrepro.workload.model import PyramidNet, count_parameters, model_info

# The paper's table (Han et al. 2017) rounds to 0.1 M; these are the exact counts, BN included.
PAPER_PARAMS = [
    (110, 48, "basic", 1_772_706, 1.7),
    (110, 84, "basic", 3_904_446, 3.8),
    (110, 270, "basic", 28_485_477, 28.3),
    (164, 270, "bottleneck", 27_216_021, 27.0),
    (272, 200, "bottleneck", 26_210_842, 26.0),
]


@pytest.mark.parametrize("depth,alpha,block,exact,paper_m", PAPER_PARAMS)
def test_parameter_counts_match_the_paper(depth, alpha, block, exact, paper_m):
    n = count_parameters(PyramidNet(depth, alpha, block))
    assert n == exact
    assert abs(n / 1e6 - paper_m) < 0.25  # the paper's rounding


def test_macs_per_image():
    assert model_info(110, 48, "basic")["macs_per_image"] == pytest.approx(0.40e9, rel=0.02)
    assert model_info(110, 270, "basic")["macs_per_image"] == pytest.approx(4.72e9, rel=0.01)


def test_exactly_n_blocks_per_stage_and_additive_widths():
    assert blocks_per_stage(110, "basic") == 18
    assert blocks_per_stage(164, "bottleneck") == 18
    model = PyramidNet(110, 48, "basic")
    assert len(model.blocks) == 54
    strides = [b.stride for b in model.blocks]
    assert strides.count(2) == 2 and strides[18] == 2 and strides[36] == 2
    widths = block_widths(110, 48, "basic", "additive")
    assert widths[0] == round(16 + 48 / 54) and widths[-1] == 64
    assert all(b >= a for a, b in zip(widths, widths[1:]))


def test_multiplicative_widening_grows_geometrically():
    widths = block_widths(20, 4, "basic", "multiplicative")
    assert widths[-1] == pytest.approx(64, abs=1)
    assert widths == sorted(widths)


@pytest.mark.parametrize("depth", [0, 2, 19, 21, 100])
def test_bad_depth_is_refused(depth):
    with pytest.raises(ValueError, match="6n\\+2"):
        blocks_per_stage(depth, "basic")


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_forward_shapes_and_no_relu_after_addition(block):
    depth = 20 if block == "basic" else 29
    model = PyramidNet(depth, 12, block).eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10)
    blk = model.blocks[0]
    assert not isinstance(blk.branch[-1], torch.nn.ReLU)
    assert isinstance(blk.branch[0], torch.nn.BatchNorm2d)
    # zero-padded shortcut: a zero residual branch passes the input through on its channels
    x = torch.randn(2, blk.branch[0].num_features, 32, 32)
    for p in blk.branch[-1].parameters():
        torch.nn.init.zeros_(p)
    y = blk(x)
    assert torch.equal(y[:, : x.shape[1]], x)
    assert torch.count_nonzero(y[:, x.shape[1]:]) == 0


def test_downsampling_shortcut_average_pools():
    model = PyramidNet(20, 12, "basic").eval()
    blk = model.blocks[3]
    assert blk.stride == 2
    for p in blk.branch[-1].parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(1, blk.branch[0].num_features, 32, 32)
    y = blk(x)
    assert torch.allclose(y[:, : x.shape[1]], torch.nn.functional.avg_pool2d(x, 2))


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = PyramidNet(20, 8, "basic")
    b = PyramidNet(20, 8, "basic", activation_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    for m in (a, b):
        torch.nn.functional.cross_entropy(m(x), y).backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-6)


def test_model_info_cli_prints_json(cli):
    import json

    r = cli("model-info", "--depth", "110", "--alpha", "48", "--block", "basic")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["params"] == 1_772_706 and info["macs_per_image"] > 0.39e9
    bad = cli("model-info", "--depth", "111")
    assert bad.returncode == 2 and "6n+2" in bad.stderr


# --- tensor-core widths (channel_multiple) and the eager shortcut ------------------------------------------

def _padded_entries(aligned, plain):
    """Every entry of ``aligned``'s parameters outside ``plain``'s shapes (the added channels)."""
    own = dict(plain.named_parameters())
    out = {}
    for name, p in aligned.named_parameters():
        extra = p.detach().clone()
        extra[tuple(slice(0, n) for n in own[name].shape)] = 0
        out[name] = extra
    return out


def _width(module):
    """The output channels of a convolution, BatchNorm or block (None for other modules)."""
    for attr in ("out_channels", "num_features"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    return None


def _twins(arch, seed=0):
    torch.manual_seed(seed)
    plain = PyramidNet(*arch)
    torch.manual_seed(seed)
    aligned = PyramidNet(*arch, channel_multiple=8)
    return plain, aligned


@pytest.mark.parametrize("arch", [(110, 270, "basic"), (8, 4, "basic"), (11, 12, "bottleneck")])
def test_aligned_widths_compute_the_papers_function_with_its_parameter_count(arch):
    plain, aligned = _twins(arch)
    widths = [m.out_channels for m in aligned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths[1:])  # every layer but the image's is a multiple of 8
    assert count_parameters(aligned) == count_parameters(plain)
    # drawn as the paper's widths are, from the same seed, and the run's random stream left alone
    assert all(float(p.abs().max()) == 0 for p in _padded_entries(aligned, plain).values())
    for (name, p), q in zip(plain.named_parameters(), aligned.parameters()):
        assert torch.equal(p, q[tuple(slice(0, n) for n in p.shape)]), name
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # training mode: BatchNorm on batch statistics, as in a step
        torch.testing.assert_close(aligned(x), plain(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", [(8, 4, "basic"), (11, 12, "bottleneck")])
def test_twenty_sgd_steps_keep_every_added_channel_exactly_zero(arch):
    plain, aligned = _twins(arch)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
            for m in (plain, aligned)]
    activations = []
    plain_widths = {name: _width(m) for name, m in plain.named_modules()}

    def keep(name):
        return lambda _module, _inp, out: activations.append((name, out.detach()))

    hooks = [m.register_forward_hook(keep(name)) for name, m in aligned.named_modules() if _width(m)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        x, y = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        activations.clear()
        losses = []
        for model, opt in zip((plain, aligned), opts):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    for h in hooks:
        h.remove()
    for name, extra in _padded_entries(aligned, plain).items():
        assert float(extra.abs().max()) == 0, name  # conv and FC weights, BN scales and shifts
    assert len(activations) > 3 * len(aligned.blocks)
    for name, out in activations:  # every convolution's, BatchNorm's and block's output in the last step
        assert int(out[:, plain_widths[name]:].count_nonzero()) == 0, name
    # the momentum buffers of the added entries stayed zero too (weight decay had nothing to act on)
    momentum = [opts[1].state[p]["momentum_buffer"] for p in aligned.parameters()]
    plain_shapes = [p.shape for p in plain.parameters()]
    for buf, shape in zip(momentum, plain_shapes):
        extra = buf.clone()
        extra[tuple(slice(0, n) for n in shape)] = 0
        assert float(extra.abs().max()) == 0


def test_a_state_dict_of_either_layout_loads_into_the_other():
    plain, aligned = _twins((8, 4, "basic"), seed=3)
    with torch.no_grad():  # move the weights away from the initial ones, in the aligned model
        for p in aligned.parameters():
            p.add_(0.01)
        for name, extra in _padded_entries(aligned, plain).items():
            dict(aligned.named_parameters())[name].sub_(extra)  # the added channels back at zero
    x = torch.randn(4, 3, 32, 32)
    back = PyramidNet(8, 4)
    back.load_state_dict(aligned.state_dict())  # aligned -> the paper's layout
    again = PyramidNet(8, 4, channel_multiple=8)
    again.load_state_dict(back.state_dict())  # and back
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), aligned.state_dict().values()))
    with torch.no_grad():
        torch.testing.assert_close(back(x), aligned(x), rtol=0, atol=1e-6)
        assert torch.equal(again(x), aligned(x))


def _pad_and_add(block, x):
    """The paper's shortcut as first written: zero-pad the input's channels, then add."""
    out = block.branch(x)
    shortcut = torch.nn.functional.avg_pool2d(x, 2, ceil_mode=True) if block.stride != 1 else x
    pad = out.shape[1] - shortcut.shape[1]
    return out + torch.nn.functional.pad(shortcut, (0, 0, 0, 0, 0, pad))


@pytest.mark.parametrize("block_kind", ["basic", "bottleneck"])
def test_the_eager_shortcut_is_bit_identical_to_pad_and_add(block_kind):
    torch.manual_seed(0)
    model = PyramidNet(20 if block_kind == "basic" else 29, 24, block_kind)
    x = torch.randn(4, 3, 32, 32)
    h = model.stem(x)
    for block in model.blocks:  # every block, the downsampling ones included
        a, b = h.detach().clone().requires_grad_(), h.detach().clone().requires_grad_()
        ours, reference = block(a), _pad_and_add(block, b)
        assert torch.equal(ours, reference)
        grad = torch.randn_like(ours)
        ours.backward(grad)
        reference.backward(grad)
        assert torch.equal(a.grad, b.grad)
        h = reference.detach()


def test_model_info_reports_the_macs_aligned_widths_add(cli):
    import json

    info = model_info(110, 270, "basic", channel_multiple=8)
    assert info["params"] == 28_485_477 and info["macs_per_image"] == pytest.approx(4.72e9, rel=0.01)
    assert info["aligned_macs_per_image"] > info["macs_per_image"]
    assert 0.01 < info["aligned_extra_macs"] < 0.10
    r = cli("model-info", "--depth", "8", "--alpha", "4", "--channel-multiple", "8")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["aligned_extra_macs"] > 0
    bad = cli("model-info", "--channel-multiple", "0")
    assert bad.returncode == 2 and "--channel-multiple" in bad.stderr
