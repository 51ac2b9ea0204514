"""The ring all-reduce scaling model: its arithmetic, its fit, and the report's use of it."""

import math

import pytest

from pyramidrepro.stats.scaling import (
    FIRST_BUCKET_BYTES,
    LINKS,
    DeviceStep,
    Fabric,
    Link,
    allreduce_seconds,
    ddp_buckets,
    expected_max_normal,
    fit_ring,
    parse_link,
    predict,
)

LINK = Link("test", 1.0, 100.0)  # 1 GB/s, 100 us per hop


def test_buckets_follow_ddp_first_1mib_then_the_cap():
    mib = 1024 * 1024
    assert ddp_buckets(0) == []
    assert ddp_buckets(1000) == [1000]
    sizes = ddp_buckets(60 * mib, bucket_cap_mb=25)
    assert sizes == [FIRST_BUCKET_BYTES, 25 * mib, 25 * mib, 9 * mib]
    assert sum(ddp_buckets(123_456_789, 10)) == 123_456_789


def test_ring_allreduce_cost_by_hand():
    assert allreduce_seconds(1e9, 1, LINK) == 0.0
    # 2 ranks: each sends half twice = s bytes; 2 hops of latency
    assert allreduce_seconds(1e9, 2, LINK) == pytest.approx(1.0 + 2 * 100e-6)
    # 8 ranks: 2*7/8 of the bytes, 14 hops
    assert allreduce_seconds(1e9, 8, LINK) == pytest.approx(1.75 + 14 * 100e-6)


def test_prediction_without_overlap_adds_every_bucket():
    grad = 4_000_000
    p = predict(DeviceStep(0.32, 32, grad), 2, Fabric(LINK))
    comm = grad / 1e9 + len(ddp_buckets(grad)) * 2 * 100e-6
    assert p.comm_s == pytest.approx(comm) and p.exposed_s == pytest.approx(comm)
    assert p.images_per_s == pytest.approx(64 / (0.32 + comm))
    assert p.efficiency == pytest.approx(0.32 / (0.32 + comm))
    assert predict(DeviceStep(0.32, 32, grad), 1, Fabric(LINK)).images_per_s == pytest.approx(100.0)


def test_overlap_hides_communication_behind_backward_but_not_the_last_bucket():
    grad = 200 * 1024 * 1024
    slow = Link("slow", 0.5, 10.0)
    plain = predict(DeviceStep(1.0, 64, grad), 4, Fabric(slow))
    hidden = predict(DeviceStep(1.0, 64, grad), 4, Fabric(slow, overlap=1.0))
    last = allreduce_seconds(ddp_buckets(grad)[-1], 4, slow)
    assert hidden.exposed_s == pytest.approx(max(plain.comm_s - 2 / 3, last))
    assert hidden.images_per_s > plain.images_per_s
    tiny = predict(DeviceStep(10.0, 64, grad), 4, Fabric(slow, overlap=1.0))  # backward far longer than comm
    assert tiny.exposed_s == pytest.approx(last)


def test_across_nodes_the_slowest_link_bounds_the_ring():
    one, fabric = DeviceStep(0.1, 128, 100_000_000), Fabric(LINKS["nvlink4"], LINKS["100g"], devices_per_node=8)
    in_node = predict(one, 8, fabric)
    across = predict(one, 16, fabric)
    assert in_node.nodes == 1 and across.nodes == 2
    assert across.efficiency < in_node.efficiency
    assert across.comm_s == pytest.approx(sum(allreduce_seconds(s, 16, Link("x", 12.5, 8.0))
                                              for s in ddp_buckets(100_000_000)))
    faster = predict(one, 16, Fabric(LINKS["nvlink4"], LINKS["400g"], devices_per_node=8))
    assert faster.images_per_s > across.images_per_s
    with pytest.raises(ValueError, match="inter-node link"):
        predict(DeviceStep(0.1, 128, 1000), 16, Fabric(LINK, devices_per_node=8))


def test_stragglers_cost_grows_with_the_number_of_ranks():
    assert expected_max_normal(1) == 0.0
    assert expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), rel=1e-4)
    assert expected_max_normal(8) == pytest.approx(1.4236, abs=1e-3)
    a = predict(DeviceStep(0.1, 32, 0, step_jitter_s=0.01), 2, Fabric(LINK))
    assert a.step_s == pytest.approx(0.1 + 0.01 / math.sqrt(math.pi), rel=1e-4)
    effs = [predict(DeviceStep(0.1, 32, 0, step_jitter_s=0.01), n, Fabric(LINK)).efficiency for n in (2, 4, 8, 16)]
    assert effs == sorted(effs, reverse=True)


def test_fit_recovers_bandwidth_and_latency():
    link = Link("x", 2.5, 40.0)
    sizes = [128 * 1024, 1024 * 1024, 8 * 1024 * 1024]
    for n in (2, 4):
        bw, lat = fit_ring(sizes, [allreduce_seconds(s, n, link) for s in sizes], n)
        assert bw == pytest.approx(2.5e9, rel=1e-9) and lat == pytest.approx(40e-6, rel=1e-6)


def test_links_parse_by_name_or_spec():
    assert parse_link("200g").bandwidth_GBps == 25.0
    assert parse_link("ib=12.5:2") == Link("ib", 12.5, 2.0)
    with pytest.raises(ValueError, match="NAME=GBps"):
        parse_link("warp-drive")


def test_scaling_command_predicts_from_a_given_step(cli):
    import json

    r = cli("scaling", "--step-time-ms", "250", "--batch-per-device", "128", "--depth", "20", "--alpha", "12",
            "--devices", "1", "2", "16", "--inter", "100g", "400g", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["grad_bytes"] == 4 * 84765 and d["overlap"] == 1.0
    slow, fast = d["predictions"].values()
    assert slow[0]["images_per_s"] == pytest.approx(512.0) and slow[0]["efficiency"] == pytest.approx(1.0)
    assert [p["nodes"] for p in slow] == [1, 1, 2]
    assert fast[2]["images_per_s"] >= slow[2]["images_per_s"]
    r = cli("scaling", "--step-time-ms", "250", "--batch-per-device", "128", "--devices", "1", "8")
    assert r.returncode == 0 and "PyramidNet-110 alpha=270 basic" in r.stdout and "200 Gb/s network" in r.stdout


def test_scaling_command_reads_a_run_and_rejects_bad_input(tmp_path, cli):
    from support import SMOKE

    r = cli("run", str(SMOKE), "--set", "train.threads=1", "--run-id", "one", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "smoke" / "one"
    r = cli("scaling", "--run", str(run), "--devices", "1", "2", "--inter", "ib=10:5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("PyramidNet-20 alpha=12 basic: 64 images per device") and "overlap 0," in r.stdout
    (tmp_path / "junk.h5").write_text("not HDF5")
    bad = [(["--run", str(tmp_path / "nope.h5")], "no such metrics file"),
           (["--run", str(tmp_path / "junk.h5")], "not a readable metrics file"),
           (["--step-time-ms", "100", "--batch-per-device", "8", "--intra", "warp"], "NAME=GBps"),
           (["--devices", "0"], "--devices"),
           ([], "--step-time-ms")]
    for args, message in bad:
        r = cli("scaling", *args)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
