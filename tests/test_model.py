import pytest
import torch

from pyramidrepro.spec.architecture import block_widths, blocks_per_stage
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
