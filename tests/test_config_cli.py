import os
import subprocess
from pathlib import Path

import pytest
import yaml

from pyramidrepro.config.errors import ConfigError
from pyramidrepro.config.load import load_config
from pyramidrepro.config.sweep import expand_sweep
from support import ONCE, SMOKE, find_python, run_cli


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


BAD = [
    ("model:\n  depht: 20\n", "model.depht", "unknown key"),
    ("train:\n  batch_size: big\n", "train.batch_size", "expected an integer"),
    ("model:\n  depth: 21\n", "model.depth", "6n+2"),
    ("model:\n  depth: 30\n  block: bottleneck\n", "model.depth", "9n+2"),
    ("train:\n  batch_size: 0\n", "train.batch_size", "must be > 0"),
    ("train:\n  batch_size: -4\n", "train.batch_size", "must be > 0"),
    ("train:\n  mode: horovod\n", "train.mode", "one of"),
    ("train: [1, 2\n", "", "malformed YAML"),
    ("data:\n  checksums: {test_batch: nothex}\n", "data.checksums.test_batch", "MD5"),
    ("train:\n  compile_mode: turbo\n", "train.compile_mode", "max-autotune"),
    ("train:\n  bucket_cap_mb: 0\n", "train.bucket_cap_mb", "must be > 0"),
]


@pytest.mark.parametrize("text,key,msg", BAD)
def test_bad_config_one_line_exit_2_no_run_dir(tmp_path, text, key, msg, cli):
    exp = _write(tmp_path, text)
    out = tmp_path / "out"
    r = cli("run", str(exp), "--out", str(out))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(exp) in lines[0] and key in lines[0] and msg in lines[0]
    assert not out.exists()


def test_missing_experiment_file(tmp_path, cli):
    r = cli("run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "nope.yaml" in r.stderr and "no such file" in r.stderr
    assert not (tmp_path / "out").exists()


def test_missing_cifar_files_say_where_to_put_them(tmp_path, cli):
    out = tmp_path / "out"
    r = cli("run", str(SMOKE), "--set", "data.source=cifar10", "--set",
                f"data.root={tmp_path / 'nodata'}", "--out", str(out))
    assert r.returncode == 2
    assert "cifar-10-python.tar.gz" in r.stderr and "nodata" in r.stderr
    assert not out.exists()


def test_bad_override_names_the_key(tmp_path, cli):
    r = cli("validate", str(SMOKE), "--set", "train.batch_size=[1")
    assert r.returncode == 2 and "train.batch_size" in r.stderr
    r = cli("validate", str(SMOKE), "--set", "train.lr_milestones=notalist")
    assert r.returncode == 2 and "train.lr_milestones" in r.stderr


def test_set_overrides_parse_yaml_values():
    cfg = load_config(SMOKE, ["train.lr_milestones=[0.3, 0.6]", "model.alpha=24",
                              "data.checksums={test_batch: " + "a" * 32 + "}"])
    assert cfg.train.lr_milestones == [0.3, 0.6]
    assert cfg.model.alpha == 24.0
    assert cfg.data.checksums == {"test_batch": "a" * 32}


def test_validate_prints_resolved_config(cli):
    r = cli("validate", str(SMOKE), "--set", "train.batch_size=32")
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)
    assert resolved["train"]["batch_size"] == 32 and resolved["name"] == "smoke"
    assert resolved["model"]["depth"] == 20


def test_linear_lr_scaling():
    cfg = load_config(SMOKE, ["train.batch_size=256"])
    assert cfg.effective_lr == pytest.approx(0.2)
    cfg = load_config(SMOKE, ["train.batch_size=256", "train.lr=0.05"])
    assert cfg.effective_lr == 0.05


def test_sweep_expansion_has_stable_ids(tmp_path):
    exp = _write(tmp_path, SMOKE.read_text() + "sweep:\n  train.mode: [single, ddp]\n"
                 "  train.batch_size: [32, 64, 128]\n")
    cfg = load_config(exp)
    points = expand_sweep(cfg, str(exp))
    assert len(points) == 6
    ids = [rid for rid, _ in points]
    assert len(set(ids)) == 6 and ids == [rid for rid, _ in expand_sweep(load_config(exp), str(exp))]
    assert {(c.train.mode, c.train.batch_size) for _, c in points} == {
        (m, b) for m in ("single", "ddp") for b in (32, 64, 128)}
    bad = _write(tmp_path, "sweep:\n  train.batch_size: [64, 0]\n")
    with pytest.raises(ConfigError, match="train.batch_size"):
        expand_sweep(load_config(bad), str(bad))


def test_shipped_experiments_validate():
    for exp in sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")):
        cfg = load_config(exp)
        expand_sweep(cfg, str(exp))


def test_help_explains_commands(cli):
    r = cli("--help")
    assert r.returncode == 0
    for cmd in ("run", "validate", "model-info", "bench-loader"):
        assert cmd in r.stdout


@pytest.mark.parametrize("sets,key,msg", [
    (["cluster.executor=pbs"], "cluster.executor", "one of"),
    (["cluster.nodes=0"], "cluster.nodes", "must be > 0"),
    (["container.runtime=docker"], "container.runtime", "one of"),
    (["container.binds=[/a:/b:/c:/d]"], "container.binds[0]", "SRC[:DEST[:ro]]"),
    (["sweep={cluster.partition: [a, b]}"], "sweep.cluster.partition", "dotted keys"),
    (["sweep={train.batch_size: []}"], "sweep.train.batch_size", "non-empty"),
    (["cluster.nodes=2"], "cluster.nodes", "train.mode: ddp"),
])
def test_bad_dispatch_values_name_the_key(tmp_path, sets, key, msg, cli):
    args = [x for s in sets for x in ("--set", s)]
    r = cli("submit", str(SMOKE), *ONCE, "--set", "cluster.executor=slurm", "--dry-run", "--out", str(tmp_path), *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert key in r.stderr and msg in r.stderr and str(SMOKE) in r.stderr
    assert not list(tmp_path.iterdir())


def test_local_executor_runs_a_point(tmp_path):
    r = run_cli("submit", str(SMOKE), *ONCE, "--cluster", "local", "--out", str(tmp_path), "--wait",
                "--set", "model.depth=8", "--set", "model.alpha=4")
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(list(tmp_path.glob("smoke/*/metrics.h5"))) == 1


def test_apptainer_definitions_and_templates():
    root = Path(__file__).parents[1]
    for name in ("pyramidrepro.def", "pyramidrepro-debootstrap.def"):  # one image (test_container.py)
        text = (root / "containers" / name).read_text()
        for section in ("%files", "%post", "%environment", "%runscript", "%test", "%labels"):
            assert section in text, (name, section)
    assert not list((root / "containers").glob("*ngc*"))  # an image --container refuses is not offered
    for name in ("single.sbatch", "dp.sbatch", "ddp_1node.sbatch", "ddp_multinode.sbatch"):
        body = (root / "slurm" / name).read_text()
        assert body.startswith("#!/bin/bash") and "#SBATCH" in body
        assert '"$PYRAMIDREPRO" run' in body and "slurm/locate.sh" in body
    multi = (root / "slurm" / "ddp_multinode.sbatch").read_text()
    assert "scontrol show hostnames" in multi and "srun" in multi and "MASTER_ADDR" in multi
    import shutil as _sh
    if _sh.which("apptainer"):  # pragma: no cover - not installable on the CI machines
        import subprocess
        r = subprocess.run(["apptainer", "inspect", "--help"], capture_output=True)
        assert r.returncode == 0
    else:
        print("apptainer not installed: the image build itself is not tested here")


def test_the_schema_imports_on_the_lowest_python_the_package_declares():
    """requires-python says 3.10; enum.StrEnum is 3.11: the schema keeps the same behaviour on 3.10."""

    lowest = find_python(3, 10)
    if lowest is None:
        pytest.skip("no Python 3.10 on this machine")
    code = ("import sys; from pyramidrepro.config.schema import Status; "
            "assert str(Status.COMPLETED) == 'completed' and f'{Status.OOM}' == 'oom' and Status.NAN == 'nan'; "
            "print(sys.version_info[:2])")
    r = subprocess.run([lowest, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1],
                       env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src")))
    assert r.returncode == 0 and r.stdout.strip() == "(3, 10)", r.stdout + r.stderr


def test_run_id_ignores_where_a_run_executes():
    base = load_config(SMOKE)
    moved = load_config(SMOKE, ["cluster.partition=other", "cluster.time_min=5", "container.image=/x/img.sif",
                                "metrics.flush_interval_s=9"])
    assert moved.digest() == base.digest()
    assert load_config(SMOKE, ["train.batch_size=32"]).digest() != base.digest()
    assert load_config(SMOKE, ["devices.allow_tf32=true"]).digest() != base.digest()


@pytest.mark.parametrize("sets,key", [
    (["train.mode=dp", "train.compile=true"], "train.compile"),
    (["train.mode=dp_balanced", "train.compile=true"], "train.compile"),
    (["train.mode=ddp", "train.compile=true", "train.compile_mode=reduce-overhead"], "train.compile_mode"),
])
def test_unsupported_combinations_are_config_errors(cli, sets, key):
    with pytest.raises(ConfigError) as err:
        load_config(SMOKE, sets)
    assert err.value.key == key and str(SMOKE) in str(err.value)
    r = cli("run", str(SMOKE), *[a for s in sets for a in ("--set", s)])
    assert r.returncode == 2 and key in r.stderr and "Traceback" not in r.stderr
    load_config(SMOKE, ["train.mode=ddp", "train.compile=true", "train.compile_mode=default"])  # this one is fine
