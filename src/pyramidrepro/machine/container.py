"""Running the package inside its image: Apptainer where it is installed, bubblewrap otherwise.

An image is an Apptainer SIF file or a root-filesystem folder (``containers/build-local.sh``); both
come from one recipe, ``containers/install.sh``, which puts the image's Python at
:data:`IMAGE_PYTHON` and writes :data:`IMAGE_INFO`.  A command that runs in the image gets the
host's paths it needs bound at the same place (results, data, the working folder, the experiment
file's folder), the image itself read-only, and two variables that say which image it is in.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.binds import IMAGE_FOLDERS, IMAGE_HOME, IMAGE_PYTHON, IMAGE_VENV, parse_bind
from ..config.errors import ConfigError
from ..config.experiment import ExperimentConfig
from ..config.schema import Attr
from .clean_env import KEEP_VARIABLE, PASSED_VARIABLE

IMAGE_INFO = f"{IMAGE_HOME}/IMAGE_INFO.json"  # written by containers/install.sh package
IMAGE_MANIFEST = f"{IMAGE_HOME}/MANIFEST.sha256"  # written by containers/build-local.sh
IMAGE_PACKAGE = f"{IMAGE_HOME}/src/pyramidrepro/__init__.py"
#: run inside by the image's Python before the command: only the variables a run needs go on (clean_env)
IMAGE_CLEAN_ENV = [IMAGE_PYTHON, "-I", "-S", f"{IMAGE_HOME}/src/pyramidrepro/machine/clean_env.py"]
#: set in the container for the run: the image's host path and digest (and that it is inside one)
ENV_IMAGE = "PYRAMIDREPRO_CONTAINER_IMAGE"
ENV_DIGEST = "PYRAMIDREPRO_CONTAINER_DIGEST"
#: the host's files a container sees (where the image has them), as Apptainer binds them by default
HOST_FILES = ("/etc/hosts", "/etc/passwd", "/etc/group", "/etc/resolv.conf")
BUILD_HINT = "build one with `make image` (containers/build-local.sh) or containers/build.sh (Apptainer)"


#: what container runtimes set inside the containers they start: (variable, runtime).  Apptainer and
#: Singularity name the image (its host path); Charliecloud's ch-run names none.
RUNTIME_VARIABLES = (("APPTAINER_CONTAINER", "apptainer"), ("SINGULARITY_CONTAINER", "singularity"),
                     ("CH_RUNNING", "charliecloud"))
#: beside a SIF, its digest written at build time (containers/build.sh): read instead of hashing GBs
DIGEST_SUFFIX = ".sha256"


def started_by() -> str:
    """The runtime of the container this process runs in: ``pyramidrepro`` when the package itself
    started it, else the one whose variable is set (:data:`RUNTIME_VARIABLES`), ``unknown`` in an image
    of this recipe that no known runtime names; ``""`` on the host."""
    if os.environ.get(ENV_IMAGE):
        return "pyramidrepro"
    for variable, runtime in RUNTIME_VARIABLES:
        if os.environ.get(variable):
            return runtime
    return "unknown" if Path(IMAGE_INFO).is_file() else ""


def inside() -> bool:
    """Whether this process runs in a container, however it was started (:func:`started_by`)."""
    return bool(started_by())


def image_info() -> dict[str, str]:
    """What the image this process runs in says of itself ({} on the host)."""
    try:
        return json.loads(Path(IMAGE_INFO).read_text())
    except (OSError, ValueError):
        return {}


def container_attributes() -> dict[str, Any]:
    """The run's container attributes: the runtime, the image and its digest where they are known,
    what the image says it was built from, and the Python that ran (``/opt/venv/bin/python`` in an
    image).  Started by the package, the image and digest come from the host; started otherwise,
    the image is the path the runtime names and the digest is read, never computed from a SIF."""
    runtime = started_by()
    info = image_info() if runtime else {}
    image = os.environ.get(ENV_IMAGE) or os.environ.get("APPTAINER_CONTAINER") or os.environ.get(
        "SINGULARITY_CONTAINER", "")
    digest = os.environ.get(ENV_DIGEST) or (digest_inside(image) if runtime else "")
    return {
        Attr.CONTAINER_RUNTIME: runtime,
        Attr.CONTAINER_IMAGE: image,
        Attr.CONTAINER_DIGEST: digest,
        Attr.IMAGE_COMMIT: info.get("commit", ""),
        Attr.IMAGE_RECIPE: info.get("recipe", ""),
        Attr.IMAGE_BUILT: info.get("built", ""),
        Attr.PYTHON_EXECUTABLE: sys.executable,
        Attr.CONTAINER_ENV_PASSED: os.environ.get(PASSED_VARIABLE, "") if runtime else "",
    }


def digest_inside(image: str) -> str:
    """The digest of the image this process runs in, without hashing an image file: a SIF's from the
    file its build wrote beside it (when visible here), a folder image's from its own manifest (the
    same ``sha256:`` that :func:`image_digest` gives from the host); ``""`` when neither is there."""
    if image and not Path(image).is_dir():
        return read_digest_beside(Path(image))
    return image_digest("/")


def read_digest_beside(sif: Path) -> str:
    """``sha256:…`` from ``SIF.sha256`` when it is this SIF's; else "".

    containers/build.sh writes ``sha256sum``'s line and ``# size=N sample=H`` (H: the sha256 of the
    SIF's first and last MiB): the digest is this SIF's when both match, whatever the files' ages
    (a copy may write the digest file first).  A digest file of one line (an older build) is taken
    only when it is newer than the SIF."""
    sidecar = sif.with_name(sif.name + DIGEST_SUFFIX)
    try:
        lines = sidecar.read_text().splitlines()
        word = lines[0].split()[0]
        tie = dict(kv.split("=", 1) for kv in lines[1].lstrip("# ").split()) if len(lines) > 1 else None
        if tie is not None:
            if int(tie["size"]) != sif.stat().st_size or tie["sample"] != sif_sample(sif):
                return ""  # written for another build of this path
        elif sidecar.stat().st_mtime_ns < sif.stat().st_mtime_ns:
            return ""
    except (OSError, IndexError, KeyError, ValueError):
        return ""
    return f"sha256:{word}" if len(word) == 64 and all(c in "0123456789abcdef" for c in word) else ""


SAMPLE_BYTES = 1 << 20


def sif_sample(sif: Path) -> str:
    """sha256 of a file's first and last MiB, as build.sh computes it (``head -c`` and ``tail -c``)."""
    with open(sif, "rb") as fh:
        head = fh.read(SAMPLE_BYTES)
        fh.seek(max(0, os.fstat(fh.fileno()).st_size - SAMPLE_BYTES))
        return hashlib.sha256(head + fh.read(SAMPLE_BYTES)).hexdigest()


def image_digest(image: str | Path) -> str:
    """``sha256:…`` of a SIF file (read from ``SIF.sha256`` when its build wrote one), or of a folder
    image's manifest (every file's sha256, written at build time); ``""`` for a folder without one."""
    p = Path(image)
    target = p / IMAGE_MANIFEST.lstrip("/") if p.is_dir() else p
    if not target.is_file():
        return ""
    if not p.is_dir() and (written := read_digest_beside(p)):
        return written  # a multi-GB SIF is hashed once, at build time
    st = target.stat()
    return _sha256_of(str(target.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:  # noqa: ARG001 - the cache key
    """A file's sha256, once per version of it (a SIF is GBs; `reproduce` resolves it per point)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(16 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


#: the node-local scratch folder a job's Slurm (or the site's prolog) names: bound in, and passed on
SCRATCH_VARIABLE = "TMPDIR"
#: the same bind as shell text, expanded by the job's shell on the node (nothing when it is unset)
SHELL_SCRATCH_BIND = {"apptainer": '${TMPDIR:+--bind "$TMPDIR"}', "bwrap": '${TMPDIR:+--bind "$TMPDIR" "$TMPDIR"}'}


@dataclass(frozen=True)
class Container:
    """An image and the runtime that runs it; :meth:`python` is the command that starts its Python,
    through :mod:`.clean_env`: the run sees only the variables it needs, with their values on the node."""

    image: str
    runtime: str  # "apptainer" | "bwrap"
    executable: str
    digest: str
    binds: tuple[str, ...] = ()  # SRC[:DEST[:ro]], the experiment's own (config.binds.parse_bind reads them)
    env: tuple[tuple[str, str], ...] = ()

    def python(self, host_paths: list[str | Path], cwd: str | Path | None = None) -> list[str]:
        """The command (a list) that runs the image's Python with ``host_paths`` bound read-write at
        the same place; ``cwd`` is bound too and is the working folder, and so is this process's
        ``$TMPDIR`` (a job's node-local scratch) when it is a folder."""
        scratch = os.environ.get(SCRATCH_VARIABLE, "")
        return self._command(host_paths, cwd, self._scratch_binds(scratch) if os.path.isdir(scratch) else [])

    def _scratch_binds(self, folder: str) -> list[str]:
        return ["--bind", f"{folder}:{folder}"] if self.runtime == "apptainer" else ["--bind", folder, folder]

    def _command(self, host_paths: list[str | Path], cwd: str | Path | None, scratch: list[str]) -> list[str]:
        cwd = str(Path(cwd or os.getcwd()).resolve())
        binds = [*(f"{p}:{p}" for p in same_place(host_paths + [cwd])), *self.binds]
        env = [(ENV_IMAGE, self.image), (ENV_DIGEST, self.digest), *self.env]
        if self.env:
            env.append((KEEP_VARIABLE, ",".join(k for k, _ in self.env)))
        if self.runtime == "apptainer":
            cmd = [self.executable, "exec", "--nv", "--pwd", cwd]
            for b in binds:
                cmd += ["--bind", b]
            for k, v in env:
                cmd += ["--env", f"{k}={v}"]
            return [*cmd, *scratch, self.image, *IMAGE_CLEAN_ENV]
        cmd = [self.executable, *root_from(Path(self.image)), "--proc", "/proc", "--dev", "/dev",
               "--tmpfs", "/tmp", "--tmpfs", "/dev/shm", "--ro-bind", "/sys", "/sys"]
        for f in HOST_FILES:
            if Path(f).exists() and (Path(self.image) / f.lstrip("/")).exists():
                cmd += ["--ro-bind", f, f]
        for b in binds:
            src, dest, read_only = parse_bind(b)
            cmd += ["--ro-bind" if read_only else "--bind", src, dest]
        cmd += [*scratch, "--chdir", cwd, "--setenv", "PATH", f"{IMAGE_VENV}/bin:/usr/local/bin:/usr/bin:/bin"]
        for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD"):
            cmd += ["--unsetenv", k]
        for k, v in env:
            cmd += ["--setenv", k, v]
        return [*cmd, *IMAGE_CLEAN_ENV]

    @property
    def forwards_signals(self) -> bool:
        """Whether the runtime's own process passes the signals it gets on to the run: Apptainer's
        does; bwrap's does not, and dies of SIGTERM, leaving the run orphaned."""
        return self.runtime != "bwrap"

    def python_command(self, host_paths: list[str | Path], cwd: str | Path | None = None,
                       on_node: bool = True) -> str:
        """:meth:`python` as one shell string (submitit's ``python`` parameter).  ``on_node``: the line
        is written here and run by a job's shell on its node (Slurm's batch script), which binds its
        own ``$TMPDIR`` when it has one; else (the local executor, which runs it without a shell, on
        this machine) this process's ``$TMPDIR`` is bound, as :meth:`python` does."""
        if not on_node:
            return " ".join(shlex.quote(p) for p in self.python(host_paths, cwd))
        marker = "\0scratch"
        parts = self._command(host_paths, cwd, [marker])
        return " ".join(SHELL_SCRATCH_BIND[self.runtime] if p == marker else shlex.quote(p) for p in parts)


def root_from(image: Path) -> list[str]:
    """bwrap arguments that lay a folder image's top level over bwrap's own tmpfs root: its folders
    read-only, its symlinks as they are, its empty folders (home, mnt, ...) writable, so that a host
    path below them can be bound; the image itself is never written."""
    args: list[str] = []
    for entry in sorted(image.iterdir()):
        name = "/" + entry.name
        if entry.is_symlink():
            args += ["--symlink", os.readlink(entry), name]
        elif entry.is_dir() and name not in ("/proc", "/dev", "/sys", "/tmp"):
            args += ["--dir", name] if not any(entry.iterdir()) else ["--ro-bind", str(entry), name]
    return args


def same_place(paths: list[str | Path]) -> list[str]:
    """The existing ``paths``, resolved, without duplicates or paths inside another one, parents first;
    never ``/`` nor a folder that holds one of the image's own (:data:`IMAGE_FOLDERS`: it would hide
    them; a job started from ``/`` or ``/opt`` keeps the image's)."""
    kept: list[Path] = []
    found = {Path(p).resolve() for p in paths if Path(p).exists()}
    found = {p for p in found if not any(p == f or p in f.parents for f in map(Path, IMAGE_FOLDERS))}
    for p in sorted(found, key=lambda p: len(p.parts)):
        if not any(p == k or k in p.parents for k in kept):
            kept.append(p)
    return [str(p) for p in kept]


def resolve(cfg: ExperimentConfig, source: str, preview: bool = False) -> Container | None:
    """The container ``cfg`` runs in (None: on the host, or already inside one).

    ConfigError, naming the key, for a missing image, an image without the package, a runtime that
    is not installed, or a GPU run under bubblewrap.  ``preview`` (a dry run, perhaps for a cluster
    whose image is not on this machine): an Apptainer image that is not here is shown unchecked."""
    c = cfg.container
    if not c.image or inside():
        return None
    image = Path(c.image).expanduser()
    own = {"binds": tuple(c.binds), "env": tuple(sorted(c.env.items()))}
    if preview and not image.exists() and c.runtime != "bwrap":
        return Container(image=str(image), runtime="apptainer", executable=c.apptainer, digest="", **own)
    if not image.exists():
        raise ConfigError(source, "container.image", f"{c.image}: no such image file or folder ({BUILD_HINT})")
    image = image.resolve()
    apptainer, bwrap = shutil.which(c.apptainer), shutil.which("bwrap")
    runtime = runtime_for(cfg, source, image, apptainer, bwrap)
    check_binds(c.binds, source)
    if not has_package(image, apptainer if runtime == "apptainer" else None):
        raise ConfigError(source, "container.image",
                          f"{image} holds no pyramidrepro package at {IMAGE_PACKAGE} with {IMAGE_PYTHON}: "
                          f"not an image of this recipe ({BUILD_HINT})")
    return Container(image=str(image), runtime=runtime, executable=apptainer if runtime == "apptainer" else bwrap,
                     digest=image_digest(image), **own)


def runtime_for(cfg: ExperimentConfig, source: str, image: Path, apptainer: str | None, bwrap: str | None) -> str:
    """The runtime that runs ``image`` (``container.runtime``, or the one ``auto`` finds), checked
    to be installed (``apptainer`` and ``bwrap``: their paths, None when not on PATH) and able to."""
    runtime = cfg.container.runtime
    if runtime == "auto":
        runtime = _found_runtime(cfg, source, image, apptainer, bwrap)
    if runtime == "apptainer" and not apptainer:
        raise ConfigError(source, "container.runtime", f"apptainer: {cfg.container.apptainer!r} is not on PATH")
    if runtime == "bwrap":
        _check_bwrap(cfg, source, image, bwrap)
    return runtime


def _found_runtime(cfg: ExperimentConfig, source: str, image: Path, apptainer: str | None, bwrap: str | None) -> str:
    """``auto``: Apptainer where it is installed, else bubblewrap for a folder image."""
    if apptainer:
        return "apptainer"
    if bwrap and image.is_dir():
        return "bwrap"
    raise ConfigError(source, "container.runtime",
                      f"no container runtime found for {image}: {cfg.container.apptainer!r} is not on PATH"
                      + ("" if image.is_dir() else " (a .sif file needs Apptainer)")
                      + ("" if bwrap or not image.is_dir() else ", nor is bwrap (apt-get install bubblewrap)"))


def _check_bwrap(cfg: ExperimentConfig, source: str, image: Path, bwrap: str | None) -> None:
    """bubblewrap is installed, ``image`` is a folder, and the run is a CPU run."""
    if not bwrap:
        raise ConfigError(source, "container.runtime", "bwrap is not on PATH (apt-get install bubblewrap)")
    if not image.is_dir():
        raise ConfigError(source, "container.runtime",
                          f"bwrap runs a root-filesystem folder, and {image} is a file (a .sif needs Apptainer)")
    if cfg.devices.device == "cuda":
        raise ConfigError(source, "container.runtime",
                          "a GPU run in a container needs Apptainer (exec --nv binds the driver); "
                          "bwrap runs CPU runs only")


def check_binds(binds: list[str], source: str) -> None:
    """Every bind's source exists (their form and destination are checked with the config)."""
    for i, b in enumerate(binds):
        host = parse_bind(b).source
        if not Path(host).exists():
            raise ConfigError(source, f"container.binds[{i}]", f"{host}: no such path to bind (from {b!r})")


def has_package(image: Path, apptainer: str | None) -> bool:
    """Whether ``image`` holds the package and the image's Python (a SIF is asked through Apptainer)."""
    if image.is_dir():
        return (image / IMAGE_PACKAGE.lstrip("/")).is_file() and os.path.lexists(image / IMAGE_PYTHON.lstrip("/"))
    if apptainer is None:
        return False
    probe = subprocess.run([apptainer, "exec", str(image), "test", "-f", IMAGE_PACKAGE, "-a", "-e", IMAGE_PYTHON],
                           capture_output=True, timeout=300)
    return probe.returncode == 0


def run_in_image(box: Container, host_paths: list[str | Path], args: list[str]) -> int:
    """Run the image's Python with ``args`` here and wait; returns its exit code.

    SIGTERM and Ctrl-C reach the Python inside as SIGTERM (its run ends interrupted): bwrap would
    not pass them on and is started ignoring SIGTERM, so a signal to the group reaches only its child."""
    import signal

    ignore = None if box.forwards_signals else (lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    proc = subprocess.Popen([*box.python(host_paths), *args], start_new_session=True, preexec_fn=ignore)

    def forward(signum: int, frame: Any) -> None:  # noqa: ARG001
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
