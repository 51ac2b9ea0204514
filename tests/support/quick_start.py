"""README's cluster quick start as commands, and a runner that types them on this machine with the few
substitutions a site's own resources need here, each named with its reason and each required to apply
(a README edit that drops or changes a line fails the test rather than skipping the line)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from . import ROOT
from .apptainer import install as install_apptainer

#: the heading of README's quick start; its first bash block is the one run
SECTION = "## On a Slurm cluster"
#: the experiment the quick start submits in place of the paper's GPU campaign (the test cluster has no
#: GPU): the smoke test, on Slurm as fig5.yaml says, on the CIFAR-10 the quick start fetched (its files'
#: own MD5s), small enough for one pass in a minute
SUBMITTED = ("experiments/smoke.yaml --min-repeats 1 --max-repeats 1 --set cluster.executor=slurm "
             "--set data.source=cifar10 --set data.root=data --set model.depth=8 --set model.alpha=4 "
             "--set train.batch_size=16 --set train.threads=1 --set cluster.cpus_per_task=1 "
             "--set cluster.time_min=10")


def quick_start_commands(readme: str) -> list[str]:
    """The commands of the quick start's first bash block: continuation lines joined, comments dropped."""
    section = readme.split(SECTION, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    joined = re.sub(r"\\\n\s*", "", block)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines() if line.strip()]


@dataclass(frozen=True)
class Substitution:
    old: str
    new: str
    why: str


def _serve(folder: Path) -> http.server.ThreadingHTTPServer:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


class QuickStart:
    """Types the quick start in ``tmp``: the clone is ``tmp/pyramidrepro``, ``python`` stands in for
    ``python3.11`` and the image folder ``image`` for the SIF (through :mod:`support.apptainer`)."""

    def __init__(self, tmp: Path, python: str, image: Path) -> None:
        from pyramidrepro.workload.data import ARCHIVE_NAME
        from support.cifar_format import write_cifar10

        self.tmp, self.clone = tmp, tmp / "pyramidrepro"
        sums = write_cifar10(tmp / "served", per_batch=40, test=40)
        self.httpd = _serve(tmp / "served")
        checksums = json.dumps({k: v for k, v in sums.items() if k != ARCHIVE_NAME})
        url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{ARCHIVE_NAME}"
        self.sif = tmp / "images" / "pyramidrepro.sif"
        self.sif.parent.mkdir()
        self.env = {**install_apptainer(tmp / "apptainer-bin", image), "PYRAMIDREPRO_BUILD_MIN_GB": "1",
                    "APPTAINER_TMPDIR": str(tmp / "apptainer-tmp")}  # build.sh's default is /var/tmp
        self.substitutions = [
            Substitution("<this repository>", str(ROOT), "this checkout (its uncommitted files laid over)"),
            Substitution("python3.11 -m venv", f"{python} -m venv", "the lowest Python the package declares"),
            Substitution("/shared/images/pyramidrepro.sif", str(self.sif), "no shared file system here"),
            Substitution("data fetch --root data", f"data fetch --root data --url {url} --md5 {sums[ARCHIVE_NAME]}",
                         "no internet here: a CIFAR-10 archive in the official format, served locally"),
            Substitution("submit experiments/fig5.yaml", f"submit {SUBMITTED} --set 'data.checksums={checksums}'",
                         "the test cluster has no GPU"),
            Substitution("cluster.partition=gpu", "cluster.partition=debug", "the test cluster's partition"),
            Substitution("results/runs/fig5", "results/runs/smoke", "the submitted experiment's campaign"),
        ]
        self.used: set[str] = set()
        self.outputs: dict[str, str] = {}

    def run(self, command: str, substitute: bool = True) -> subprocess.CompletedProcess:
        """One command, substituted, in bash (``set -euo pipefail``) from where the user would be."""
        for s in self.substitutions if substitute else []:
            if s.old in command:
                command = command.replace(s.old, s.new)
                self.used.add(s.old)
        cwd = self.clone if self.clone.exists() else self.tmp
        env = {**_environ(), **self.env}
        r = subprocess.run(["bash", "-c", f"set -euo pipefail; {command}"], capture_output=True, text=True,
                           cwd=cwd, env=env, timeout=900)
        if command.startswith("git clone"):
            _lay_working_tree_over(self.clone)
        verb = re.match(r"\.venv/bin/pyramidrepro (\S+)", command)
        self.outputs[verb.group(1) if verb else command.split()[0]] = r.stdout + r.stderr
        return r

    def check_all_substitutions_used(self) -> None:
        unused = [f"{s.old!r} ({s.why})" for s in self.substitutions if s.old not in self.used]
        assert not unused, f"README's quick start no longer has {unused}: update support/quick_start.py"

    def installed(self) -> set[str]:
        listed = subprocess.run([self.clone / ".venv/bin/pip", "list", "--format=freeze"], capture_output=True,
                                text=True, check=True).stdout
        return {line.split("==")[0].lower() for line in listed.splitlines()}

    def check_campaign(self) -> None:
        """The submitted point ran in the image the SIF names, recorded the SIF with the digest build.sh
        wrote beside it, under Slurm; the report was written."""
        from pyramidrepro.records.metrics import read_metrics

        campaign = self.clone / "results" / "runs" / "smoke"
        runs = [read_metrics(p) for p in campaign.glob("*/metrics.h5")]
        assert len(runs) == 1, sorted(campaign.iterdir())
        a = runs[0]["attrs"]
        digest = (self.sif.parent / (self.sif.name + ".sha256")).read_text().split()[0]
        assert (a["status"], a["container_image"], a["container_digest"]) == (
            "completed", str(self.sif), f"sha256:{digest}")
        assert a["slurm_job_id"] and a["slurm_partition"] == "debug"
        assert a["python_executable"] == "/opt/venv/bin/python"
        assert (campaign / "report.md").is_file()

    def __enter__(self) -> QuickStart:
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}


def _lay_working_tree_over(clone: Path) -> None:
    """The checkout's tracked and untracked (not ignored) files copied over the clone, and the files it
    deleted removed: the quick start runs the tree under test, committed or not."""
    def listed(*flags: str) -> list[str]:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", *flags], capture_output=True,
                             check=True).stdout.decode()
        return [p for p in out.split("\0") if p]

    deleted = set(listed("-d"))
    for path in listed("-co", "--exclude-standard"):
        if path not in deleted and (ROOT / path).is_file():
            (clone / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, clone / path)
    for path in deleted:
        (clone / path).unlink(missing_ok=True)
