"""Careless and hostile inputs for the CLI, each with the verdict it must get.

Every case runs ``pyramidrepro.cli.main`` in this process (fast: most never reach torch) and is
classified as one of:

* ``clear``: exit 2, the last line of stderr is ``pyramidrepro...: error: ...`` naming the case's
  key, no traceback, and nothing created under ``--out``;
* ``ok``: exit 0;
* ``traceback``: an exception escaped, or stderr holds a traceback;
* ``hang``: still running after the case's time limit;
* ``silent``: anything else (a run that should have been refused, a wrong exit code ...).

``cd tests && python -m support.fuzz_verdicts`` prints the count of each verdict per group; the tests assert each
case gets the verdict it expects.
"""

from __future__ import annotations

import io
import signal
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import call_main, environment

SMOKE = {
    "name": "fz",
    "model": {"depth": 8, "alpha": 4, "block": "basic"},
    "data": {"source": "synthetic", "loader": "torch", "synthetic_train_size": 256, "synthetic_test_size": 64},
    "train": {"mode": "single", "batch_size": 32, "epochs": 1, "max_steps": 3, "warmup_steps": 1,
              "log_every": 1, "evaluate": False},
    "metrics": {"flush_interval_s": 0.5},
}


@dataclass
class Case:
    group: str
    name: str
    argv: list[str]  # {exp}: the experiment file, {out}: the results folder, {tmp}: the case's folder
    expect: str = "clear"
    key: str = ""  # what the one-line error must mention
    text: str | bytes | None = None  # the experiment file's content (None: the smoke config)
    setup: Callable[[Path], None] | None = None
    timeout_s: int = 30
    env: dict[str, str] = field(default_factory=dict)  # set while the case runs ({tmp} as in argv)

    @property
    def id(self) -> str:
        return f"{self.group}:{self.name}"


@dataclass
class Outcome:
    verdict: str
    code: int | None
    stderr: str
    created: list[str] = field(default_factory=list)


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ANN001, ARG001
    raise CaseTimeout


def run_case(case: Case, tmp: Path) -> Outcome:
    """Run one case in this process and classify it."""
    tmp.mkdir(parents=True, exist_ok=True)
    exp = tmp / "exp.yaml"
    content = case.text if case.text is not None else yaml.safe_dump(SMOKE)
    if isinstance(content, bytes):
        exp.write_bytes(content)
    else:
        exp.write_text(content)
    out = tmp / "out"
    if case.setup is not None:
        case.setup(tmp)
    before = set(out.rglob("*")) if out.exists() else set()
    argv = [a.format(exp=exp, out=out, tmp=tmp) for a in case.argv]
    env = {k: v.format(exp=exp, out=out, tmp=tmp) for k, v in case.env.items()}
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(case.timeout_s)
    code: int | None = None
    try:
        with environment(env):
            result = call_main(*argv)
        code, text = result.returncode, result.stderr
    except CaseTimeout:
        return Outcome("hang", None, "")
    except BaseException as exc:  # noqa: BLE001 - any escape is the verdict
        text = f"Traceback (escaped): {type(exc).__name__}: {str(exc)[:300]}\n"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    created = sorted(str(p.relative_to(out)) for p in (set(out.rglob("*")) if out.exists() else set()) - before)
    if "Traceback" in text:
        return Outcome("traceback", code, text, created)
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if case.expect == "ok":
        return Outcome("ok" if code == 0 else "silent", code, text, created)
    clear = (code == 2 and last.startswith("pyramidrepro") and ": error:" in last
             and case.key.lower() in last.lower() and not created)
    return Outcome("clear" if clear else "silent", code, text, created)


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------

RUN = ["run", "{exp}", "--out", "{out}", "--no-progress"]


def _smoke(**sections: dict) -> str:
    cfg = yaml.safe_load(yaml.safe_dump(SMOKE))
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return yaml.safe_dump(cfg)


def _set(key: str, value: str, expect_key: str | None = None, group: str = "values", **kw) -> Case:
    return Case(group, f"{key}={value}", [*RUN, "--set", f"{key}={value}"], key=expect_key or key, **kw)


BOMB = "description:\n  a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"  {c}: &{c} [{','.join('*' + p for p in [chr(ord(c) - 1)] * 10)}]\n" for c in "bcdefghij"
) + "name: bomb\n"


def _deep(n: int) -> str:
    return "name: deep\ndescription: " + "[" * n + "]" * n + "\n"


def _write_truncated_archive(tmp: Path) -> None:
    root = tmp / "cifar"
    root.mkdir(parents=True, exist_ok=True)
    blob = io.BytesIO()
    with tarfile.open(fileobj=blob, mode="w:gz") as tar:
        data = b"x" * 200000
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (root / "cifar-10-python.tar.gz").write_bytes(blob.getvalue()[:2000])


def _write_bad_checkpoint(content: bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        folder = tmp / "out" / "fz" / "r1"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "checkpoint.pt").write_bytes(content)
    return setup


def _file_at(rel: str, content: bytes = b"x") -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(content)
    return setup


def _bad_runs(kind: str) -> Callable[[Path], None]:
    """A results folder whose only run is broken in one way."""
    def setup(tmp: Path) -> None:
        from pyramidrepro.records.metrics import MetricsWriter

        good = tmp / "res" / "fz" / "r0"
        good.mkdir(parents=True)
        w = MetricsWriter(good / "metrics.h5", flush_interval_s=0)
        w.set_attrs(config_yaml=yaml.safe_dump(SMOKE), mode="single", batch_size=32)
        w.set_summary(images_per_s=100.0)
        w.close("completed")
        folder = tmp / "res" / "fz" / "r1"
        folder.mkdir(parents=True)
        if kind == "garbage":
            (folder / "metrics.h5").write_bytes(b"not hdf5" * 100)
            return
        w = MetricsWriter(folder / "metrics.h5", flush_interval_s=0)
        attrs = {"config_yaml": yaml.safe_dump(SMOKE), "mode": "single", "batch_size": 32}
        if kind == "yaml":
            attrs["config_yaml"] = "model: [unclosed"
        elif kind == "list":
            attrs["config_yaml"] = "- a\n- b\n"
        elif kind == "type":
            attrs["batch_size"] = "many"
        elif kind == "model":
            attrs["config_yaml"] = "model: 7\ntrain: []\n"
        w.set_attrs(**attrs)
        w.set_summary(images_per_s=100.0)
        w.close("completed")
    return setup


def all_cases() -> list[Case]:
    c: list[Case] = []
    add = c.append
    # -- files and YAML ------------------------------------------------------------------------
    g = "yaml"
    add(Case(g, "alias bomb", RUN, text=BOMB, key="alias", timeout_s=20))
    add(Case(g, "alias bomb in validate", ["validate", "{exp}"], text=BOMB, key="alias", timeout_s=20))
    add(Case(g, "binary file", RUN, text=bytes(range(256)) * 4, key="UTF-8"))
    add(Case(g, "utf-16 file", RUN, text=_smoke().encode("utf-16"), key="UTF-8"))
    add(Case(g, "directory as file", ["run", "{tmp}", "--out", "{out}"], key="not a file"))
    add(Case(g, "empty file", RUN, text="", key="empty"))
    add(Case(g, "only a comment", RUN, text="# nothing\n", key="empty"))
    add(Case(g, "deep nesting", RUN, text=_deep(3000), key="nest"))
    add(Case(g, "deep mapping", RUN, text="name: x\ndescription: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n",
             key="nest"))
    add(Case(g, "top-level list", RUN, text="- 1\n- 2\n", key="mapping"))
    add(Case(g, "top-level scalar", RUN, text="42\n", key="mapping"))
    add(Case(g, "duplicate top key", RUN, text=_smoke() + "name: other\n", key="duplicate"))
    add(Case(g, "duplicate nested key", RUN, text="name: x\ntrain:\n  lr: 0.1\n  lr: 0.2\n", key="duplicate"))
    add(Case(g, "malformed YAML", RUN, text="train: [1, 2\n", key="malformed"))
    add(Case(g, "tab indentation", RUN, text="train:\n\tlr: 0.1\n", key="malformed"))
    add(Case(g, "unknown key", RUN, text=_smoke(train={"lrr": 0.1}), key="train.lrr"))
    add(Case(g, "unknown section", RUN, text=_smoke(optim={"lr": 0.1}), key="optim"))
    add(Case(g, "missing file", ["run", "{tmp}/nope.yaml", "--out", "{out}"], key="no such file"))
    add(Case(g, "NUL bytes", RUN, text=b"name: x\x00\n", key="exp.yaml"))
    add(Case(g, "sweep in run", RUN, text=_smoke(sweep={"train.batch_size": [32, 64]}), key="sweep"))
    add(Case(g, "huge value in message", RUN, text=_smoke(train={"mode": "x" * 100000}), key="train.mode"))
    # -- names and paths -----------------------------------------------------------------------
    g = "paths"
    for name in ["../../escape", "a/b", "..", ".", "", "x\ny", "-rf", "a" * 300]:
        add(Case(g, f"name {name[:20]!r}", RUN, text=_smoke(name=name), key="name"))
    for rid in ["../up", "a/b", "..", ""]:
        add(Case(g, f"run id {rid!r}", [*RUN, "--run-id", rid], key="--run-id"))
    add(Case(g, "--out is a file", ["run", "{exp}", "--out", "{tmp}/afile"], setup=_file_at("afile"), key="--out"))
    add(Case(g, "report on a file", ["report", "{tmp}/afile"], setup=_file_at("afile"), key="afile"))
    add(Case(g, "report on a missing folder", ["report", "{tmp}/none"], key="none"))
    add(Case(g, "report --out is a file", ["report", "{tmp}", "--out", "{tmp}/afile"], setup=_file_at("afile"),
             key="--out"))
    # -- values --------------------------------------------------------------------------------
    for key, value in [
        ("train.lr", "-0.1"), ("train.lr", ".nan"), ("train.lr", ".inf"), ("train.base_lr", "-1"),
        ("train.base_lr", ".nan"), ("train.momentum", "-0.5"), ("train.momentum", "1.5"),
        ("train.weight_decay", "-1e-4"), ("train.weight_decay", ".nan"), ("model.alpha", ".nan"),
        ("model.alpha", ".inf"), ("model.alpha", "1e9"), ("model.depth", "6000002"), ("model.depth", "-20"),
        ("model.num_classes", "100000000000"), ("model.num_classes", "0"), ("train.seed", "-1"),
        ("train.dist_timeout_s", "-5"), ("train.dist_timeout_s", "0"), ("train.dist_timeout_s", ".nan"),
        ("data.synthetic_train_size", "1000000000000"), ("data.synthetic_train_size", "16"),
        ("data.synthetic_test_size", "1000000000000"), ("train.batch_size", "0"), ("train.batch_size", "-32"),
        ("train.batch_size", "1000000000000"), ("train.epochs", "0"), ("train.max_steps", "-1"),
        ("train.warmup_steps", "-1"), ("train.log_every", "0"), ("train.checkpoint_every_s", "-1"),
        ("metrics.flush_interval_s", "-1"), ("metrics.flush_interval_s", ".nan"), ("train.bucket_cap_mb", ".nan"),
        ("devices.memory_limit_gb", ".nan"), ("train.lr_milestones", "[2]"), ("train.threads", "0"),
        ("data.num_workers", "-1"), ("train.accumulation_steps", "0"), ("cluster.mem_gb", "-1"),
        ("cluster.time_min", "0"), ("cluster.signal_delay_s", "-1"), ("cluster.max_requeues", "-1"),
        ("train.epochs", "1000000000000"), ("train.lr_reference_batch", "0"), ("train.threads", "100000"),
    ]:
        add(_set(key, value))
    # -- what this machine cannot run -----------------------------------------------------------
    g = "machine"
    add(_set("train.mode", "dp", group=g))
    add(_set("train.mode", "dp_balanced", group=g))
    add(Case(g, "nccl on CPU", [*RUN, "--set", "train.mode=ddp", "--set", "train.backend=nccl"], key="train.backend"))
    add(Case(g, "sync_bn on CPU", [*RUN, "--set", "train.mode=ddp", "--set", "train.sync_bn=true"], key="sync_bn"))
    add(_set("devices.device", "cuda", group=g))
    add(Case(g, "dali on cuda", [*RUN, "--set", "data.loader=dali", "--set", "devices.device=cuda"],
             key="devices.device"))
    add(Case(g, "CPU memory cap below torch's own", [*RUN, "--set", "devices.memory_limit_gb=0.1",
                                                     "--set", "devices.device=cpu"], key="memory_limit_gb"))
    # -- command-line flags ---------------------------------------------------------------------
    g = "flags"
    add(Case(g, "--set without =", [*RUN, "--set", "train.lr"], key="train.lr"))
    add(Case(g, "--set unknown key", [*RUN, "--set", "train.nope=1"], key="train.nope"))
    add(Case(g, "--set into a scalar", [*RUN, "--set", "name.x=1"], key="name"))
    add(Case(g, "--set bad YAML", [*RUN, "--set", "train.lr=[1"], key="train.lr"))
    add(Case(g, "--nproc 0", [*RUN, "--nproc", "0"], key="--nproc"))
    add(Case(g, "--nproc -3", [*RUN, "--nproc", "-3"], key="--nproc"))
    add(Case(g, "--nproc 2 single", [*RUN, "--nproc", "2"], key="train.mode"))
    add(Case(g, "--nproc huge", [*RUN, "--set", "train.mode=ddp", "--nproc", "100000"], key="--nproc"))
    add(Case(g, "scaling bad link", ["scaling", "--step-time-ms", "10", "--batch-per-device", "8", "--intra", "x=y"],
             key="--intra"))
    add(Case(g, "scaling no base", ["scaling"], key="--step-time-ms"))
    add(Case(g, "scaling devices 0", ["scaling", "--step-time-ms", "10", "--batch-per-device", "8", "--devices", "0"],
             key="--devices"))
    add(Case(g, "model-info bad depth", ["model-info", "--depth", "7"], key="depth"))
    add(Case(g, "model-info huge depth", ["model-info", "--depth", "6000002"], key="depth"))
    add(Case(g, "bench steps 0", ["bench", "--steps", "0"], key="--steps"))
    add(Case(g, "bench budget 0", ["bench", "--budget-s", "0"], key="--budget-s"))
    add(Case(g, "bench-loader images 0", ["bench-loader", "--images", "0"], key="--images"))
    add(Case(g, "bench-loader batch 0", ["bench-loader", "--batch-size", "0"], key="--batch-size"))
    add(Case(g, "validate missing", ["validate", "{tmp}/none.yaml"], key="no such file"))
    add(Case(g, "reproduce missing", ["reproduce", "--experiment", "{tmp}/none.yaml", "--out", "{out}"],
             key="no such file"))
    # -- injection into scripts ------------------------------------------------------------------
    g = "injection"
    dry = ["submit", "{exp}", "--out", "{out}", "--dry-run", "--set", "cluster.executor=slurm"]
    for section, key, value in [
        ("cluster", "partition", "gpu\n#SBATCH --time=0"), ("cluster", "account", "a\nb"),
        ("cluster", "constraint", "x\ry"), ("cluster", "qos", "q\nz"),
        ("cluster", "additional_parameters", {"mail\nx": 1}), ("cluster", "additional_parameters", {"mail": "a\nb"}),
        ("cluster", "setup", ["ok", "a\nb"]), ("container", "env", {"A": "x\ny"}),
        ("container", "binds", ["/a\n/b"]), ("container", "apptainer", "apptainer\nrm"),
        ("container", "image", "/x/i\nmg.sif"),
    ]:
        add(Case(g, f"{section}.{key} {str(value)[:14]!r}", dry, text=_smoke(**{section: {key: value}}),
                 key=f"{section}.{key}"))
    add(Case(g, "name with newline", dry, text=_smoke(name="a\nb"), key="name"))
    # -- data ----------------------------------------------------------------------------------
    g = "data"
    cifar = ["--set", "data.source=cifar10", "--set", "data.root={tmp}/cifar"]
    add(Case(g, "truncated archive", [*RUN, *cifar, "--set", "data.checksums={{cifar-10-python.tar.gz: "
                                      + "ab" * 16 + "}}"], setup=_write_truncated_archive, key="cifar-10-python"))
    add(Case(g, "truncated archive, per-file sums", [*RUN, *cifar, "--set", "data.checksums={{data_batch_1: "
                                                     + "ab" * 16 + "}}"], setup=_write_truncated_archive,
             key="cifar-10-python"))
    add(Case(g, "root is a file", [*RUN, "--set", "data.source=cifar10", "--set", "data.root={tmp}/afile"],
             setup=_file_at("afile"), key="afile"))
    add(Case(g, "corrupt checkpoint", [*RUN, "--run-id", "r1"], setup=_write_bad_checkpoint(b"garbage" * 50),
             key="checkpoint.pt"))
    add(Case(g, "empty checkpoint", [*RUN, "--run-id", "r1"], setup=_write_bad_checkpoint(b""), key="checkpoint.pt"))
    # -- report over broken runs ----------------------------------------------------------------
    g = "report"
    for kind in ("garbage", "yaml", "list", "type", "model"):
        add(Case(g, f"one {kind} run", ["report", "{tmp}/res"], setup=_bad_runs(kind), expect="ok"))
    add(Case(g, "no runs", ["report", "{tmp}"], key="metrics.h5"))
    add(Case(g, "only unreadable runs", ["report", "{tmp}/bad"], key="skipped",
             setup=_file_at("bad/fz/r1/metrics.h5", b"not hdf5" * 100)))
    return c + _bind_cases() + _submit_cases() + _model_flag_cases() + _scaling_cases() + _request_cases()


def _bind_cases() -> list[Case]:
    """Binds over the image's root or its own system folders, in every command that reads a config."""
    g = "binds"
    validate = ["validate", "{exp}"]
    dry = ["submit", "{exp}", "--out", "{out}", "--dry-run"]
    c = [Case(g, f"validate {binds}", validate, text=_smoke(container={"binds": binds}), key=f"container.binds[{i}]")
         for binds, i in [
             (["/tmp:/"], 0), (["/"], 0), (["/tmp://"], 0), (["/tmp:/usr/../"], 0), (["/tmp:/usr"], 0),
             (["/tmp:/usr/lib:ro"], 0), (["/tmp:/opt/venv"], 0), (["/tmp:/opt/venv/"], 0),
             (["/tmp:/opt/pyramidrepro/src"], 0), (["/tmp:/opt"], 0), (["/tmp:/data", "/tmp:/usr/bin"], 1),
         ]]
    c += [Case(g, "run ['/tmp:/']", RUN, text=_smoke(container={"binds": ["/tmp:/"]}), key="container.binds[0]"),
          Case(g, "run ['/']", RUN, text=_smoke(container={"binds": ["/"]}), key="container.binds[0]"),
          Case(g, "submit ['/tmp:/']", dry, text=_smoke(container={"binds": ["/tmp:/"]}), key="container.binds[0]"),
          Case(g, "validate a bind at /data", validate, text=_smoke(container={"binds": ["/tmp:/data:ro"]}),
               expect="ok"),
          Case(g, "validate a bind at /opt/data", validate, text=_smoke(container={"binds": ["/tmp:/opt/data"]}),
               expect="ok")]
    return c


def _submit_cases() -> list[Case]:
    """``submit``'s own flags, and a Slurm whose configuration file is not there."""
    g = "submit"
    wait = ["submit", "{exp}", "--out", "{out}", "--cluster", "debug", "--wait", "--poll"]
    c = [Case(g, f"--poll {v}", [*wait, v], key="--poll") for v in ("-1", "0", "nan", "inf")]
    slurm = ["submit", "{exp}", "--out", "{out}", "--cluster", "slurm"]
    no_conf = {"SLURM_CONF": "{tmp}/nonexistent.conf"}
    c += [Case(g, "SLURM_CONF missing, --no-preflight", [*slurm, "--no-preflight"], env=no_conf, key="SLURM_CONF",
               timeout_s=20),
          Case(g, "SLURM_CONF missing", slurm, env=no_conf, key="SLURM_CONF", timeout_s=20),
          Case(g, "SLURM_CONF a folder, --no-preflight", [*slurm, "--no-preflight"], env={"SLURM_CONF": "{tmp}"},
               key="SLURM_CONF", timeout_s=20)]
    # an empty configuration file: sbatch and sinfo refuse it at once, without asking any cluster
    empty = {"SLURM_CONF": "{tmp}/empty.conf"}
    c += [Case(g, "SLURM_CONF empty, --no-preflight: sbatch refuses", [*slurm, "--no-preflight"], env=empty,
               setup=_file_at("empty.conf", b""), key="sbatch", timeout_s=20),
          Case(g, "SLURM_CONF empty: sinfo refuses", slurm, env=empty, setup=_file_at("empty.conf", b""),
               key="slurm", timeout_s=20)]
    return c


def _model_flag_cases() -> list[Case]:
    """``--depth`` and ``--alpha`` of bench, scaling and model-info: one rule for all three."""
    g = "model"
    given = ["--step-time-ms", "10", "--batch-per-device", "8"]
    c: list[Case] = []
    for command in (["bench"], ["scaling", *given], ["model-info"]):
        name = command[0]
        c += [Case(g, f"{name} --depth {d}", [*command, "--depth", d], key="--depth") for d in ("7", "6000002", "-4")]
        c += [Case(g, f"{name} --alpha {a}", [*command, "--alpha", a], key="--alpha") for a in ("nan", "-1", "inf")]
        c.append(Case(g, f"{name} bottleneck --depth 14", [*command, "--block", "bottleneck", "--depth", "14"],
                      key="--depth"))
    return c


def _scaling_cases() -> list[Case]:
    """``scaling``'s links and numbers, and ``bench``'s budget."""
    g = "scaling"
    given = ["scaling", "--step-time-ms", "10", "--batch-per-device", "8"]
    c = [Case(g, f"{flag} {v}", [*given, flag, v], key=flag)
         for flag, v in [("--inter", "x=0"), ("--inter", "x=-10"), ("--inter", "x=nan"), ("--inter", "x=inf"),
                         ("--inter", "x=10:-1"), ("--inter", "x=10:nan"), ("--intra", "y=0"),
                         ("--intra", "y=-0"), ("--bucket-cap-mb", "0"), ("--bucket-cap-mb", "-1"),
                         ("--bucket-cap-mb", "nan"), ("--bucket-cap-mb", "1e-9"), ("--overlap", "2"),
                         ("--overlap", "nan"), ("--jitter-ms", "-1"), ("--jitter-ms", "nan"), ("--per-node", "0")]]
    base = ["scaling", "--batch-per-device", "8", "--step-time-ms"]
    c += [Case(g, f"--step-time-ms {v}", [*base, v], key="--step-time-ms") for v in ("-5", "0", "nan", "inf")]
    c += [Case(g, f"--batch-per-device {v}", ["scaling", "--step-time-ms", "10", "--batch-per-device", v],
               key="--batch-per-device") for v in ("0", "-8")]
    c += [Case(g, f"bench --budget-s {v}", ["bench", "--budget-s", v], key="--budget-s") for v in ("nan", "inf", "-1")]
    c.append(Case(g, "a link of its own", [*given, "--depth", "20", "--alpha", "12", "--inter", "x=10:2", "--json"],
                  expect="ok", timeout_s=60))
    return c


def _request_cases() -> list[Case]:
    """The GPU request forms and site keys of ``cluster`` (types, ranges, shapes, one form only, control
    characters), and a ``sweep`` that is not a mapping or a list of them."""
    g = "requests"
    dry = ["submit", "{exp}", "--out", "{out}", "--dry-run", "--set", "cluster.executor=slurm"]
    c = [Case(g, f"{key}={value}", [*dry, "--set", f"{key}={value}"], key=key) for key, value in [
        ("cluster.gres", "3"), ("cluster.gres", "[gpu]"), ("cluster.gres", "gpu:a100:2:4"), ("cluster.gres", "gpu::2"),
        ("cluster.gres", "gpu:0"), ("cluster.gres", "gpu:a100:99999"), ("cluster.gres", "'2'"),
        ("cluster.gres", "gpu:a b"), ("cluster.gres", "''"), ("cluster.gres", "gpu:2,,gpu:1"),
        ("cluster.gpu_type", "'a100 x'"), ("cluster.gpu_type", "a:b"), ("cluster.gpu_type", "''"),
        ("cluster.gpu_type", "[a100]"), ("cluster.exclusive", "maybe"), ("cluster.exclusive", "1"),
        ("cluster.reservation", "'a b'"), ("cluster.reservation", "a,"), ("cluster.reservation", "{{a: 1}}"),
        ("cluster.wckey", "''"), ("cluster.wckey", "'a;b'"), ("cluster.wckey", "7"), ("cluster.master_port", "80"),
        ("cluster.master_port", "0"), ("cluster.master_port", "65536"), ("cluster.master_port", "-1"),
        ("cluster.master_port", "29500.5"), ("cluster.master_port", "x"), ("cluster.master_port", ".nan"),
        ("cluster.gpus_per_node", "-1"), ("cluster.gpus_per_node", "1025"),
    ]]
    for values, key in [
        ({"gres": "gpu:2", "gpu_type": "a100"}, "cluster.gpu_type"), ({"gres": "gpu:2", "gpus_per_node": 2},
                                                                      "cluster.gpus_per_node"),
        ({"gpu_type": "a100", "gpus_per_node": 0}, "cluster.gpus_per_node"),
        ({"gres": "gpu:2", "additional_parameters": {"gres": "gpu:1"}}, "cluster.additional_parameters.gres"),
        ({"gpu_type": "a100", "additional_parameters": {"gres": "gpu:1"}}, "cluster.additional_parameters.gres"),
        ({"exclusive": True, "additional_parameters": {"exclusive": True}}, "cluster.additional_parameters"),
        ({"reservation": "r", "additional_parameters": {"reservation": "s"}}, "cluster.additional_parameters"),
        ({"wckey": "w", "additional_parameters": {"wckey": "v"}}, "cluster.additional_parameters.wckey"),
        ({"gres": "shard:2"}, "cluster.gres"),  # DP (below) with no GPU in this gres
    ]:
        text = _smoke(cluster=values, train={"mode": "dp"} if values == {"gres": "shard:2"} else {})
        c.append(Case(g, f"one form: {sorted(values)} {list(values.values())[0]}", dry, text=text, key=key))
    for key, value in [("gres", "gpu:2\n#SBATCH --time=0"), ("gpu_type", "a100\rx"), ("reservation", "r\nz"),
                       ("wckey", "w\x00"), ("gres", "gpu:\x1b[2J2")]:
        c.append(Case(g, f"control character in cluster.{key} {value!r}", dry, text=_smoke(cluster={key: value}),
                      key=f"cluster.{key}"))
    for sweep in ([], 3, "x", [{}], [{"train.batch_size": [32]}, {}]):
        for name, argv in (("validate", ["validate", "{exp}"]), ("run", RUN), ("submit", dry)):
            c.append(Case(g, f"{name} sweep: {sweep!r}", argv, text=_smoke(sweep=sweep), key="sweep"))
    c.append(Case(g, "sweep=[] in --set", [*dry, "--set", "sweep=[]"], key="sweep"))
    return c
