"""A node whose NVIDIA driver is too old for the CUDA that torch was built for: one line naming the
driver needed, not "no CUDA device".  The driver is simulated by the check's input (the
/proc/driver/nvidia/version text), never a real one."""

from pyramidrepro.machine import driver
from pyramidrepro.machine.driver import driver_problem, node_driver
from support import SMOKE

LINE = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {}  Wed Jul  2 09:34:50 UTC 2025\nGCC version:  gcc 12\n"


def test_the_version_is_read_from_the_kernel_module_line(tmp_path):
    f = tmp_path / "version"
    f.write_text(LINE.format("535.104.05"))
    assert node_driver(f) == "535.104.05"
    f.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n")
    assert node_driver(f) == "580.65.06"
    assert node_driver(tmp_path / "absent") is None
    f.write_text("garbage\n")
    assert node_driver(f) is None


def test_each_cuda_release_needs_its_minimum_driver():
    assert driver_problem("580.65.06", "13.0") is None and driver_problem("590.1", "13.0") is None
    message = driver_problem("575.57.08", "13.0")
    assert message and "needs an NVIDIA driver >= 580.65.06" in message and "575.57.08" in message
    assert "\n" not in message
    assert driver_problem("535.104.05", "12.4") is None and driver_problem("470.1", "12.4")
    assert driver_problem(None, "13.0") is None  # no driver at all: "no CUDA device" says it
    assert driver_problem("535.104.05", None) is None  # a CPU build of torch
    assert driver_problem("535.104.05", "99.0") is None  # a release this table does not know


def test_each_image_line_has_its_driver_rule_and_a_too_old_driver_is_told_the_other_line():
    from pyramidrepro.machine.driver import CUDA_LINES, line_for

    assert CUDA_LINES == {"cu130": 13, "cu128": 12}
    message = driver_problem("550.54.14", "13.0")  # the CUDA 13 line on a 550 node: refused, cu128 named
    assert "needs an NVIDIA driver >= 580.65.06" in message and "550.54.14" in message
    assert "the image's cu128 line, which this driver runs: CUDA_LINE=cu128 bash containers/build.sh" in message
    assert driver_problem("550.54.14", "12.8") is None and driver_problem("570.86.10", "12.8") is None  # cu128
    assert driver_problem("520.61.05", "12.8") and "image's" not in driver_problem("520.61.05", "13.0")  # no line
    assert line_for("580.65.06") == "cu130" and line_for("550.54.14") == "cu128" and line_for("470.1") is None


def test_a_cuda_run_on_a_node_with_an_old_driver_says_which_driver_it_needs(tmp_path, cli, monkeypatch):
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has a working GPU")
    version = tmp_path / "version"
    version.write_text(LINE.format("550.54.14"))
    monkeypatch.setattr(driver, "DRIVER_VERSION_FILE", version)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    out = tmp_path / "out"
    r = cli("run", str(SMOKE), "--out", str(out), "--set", "devices.device=cuda")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "devices.device" in r.stderr and "needs an NVIDIA driver >= 580.65.06; this node's driver is 550.54.14" \
        in r.stderr
    assert not out.exists()
    monkeypatch.setattr(driver, "DRIVER_VERSION_FILE", tmp_path / "absent")  # no driver: the plain message
    r = cli("run", str(SMOKE), "--out", str(out), "--set", "devices.device=cuda")
    assert r.returncode == 2 and "no CUDA device" in r.stderr and not out.exists()
