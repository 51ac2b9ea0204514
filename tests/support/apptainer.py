"""An ``apptainer`` for machines where Apptainer cannot be installed (this one): ``build`` writes a
stand-in SIF that names an image folder (the one the suite builds), and ``exec``/``test``/``run`` run
in that folder through bwrap with Apptainer's own options carried over (``--bind``, ``--env``,
``--pwd``; ``--nv`` and ``--cleanenv`` accepted), host ``/tmp`` bound as Apptainer binds it, and
``APPTAINER_CONTAINER`` set to the SIF as Apptainer sets it.  So the package's Apptainer path (its
command lines, the digest file ``build.sh`` writes beside the SIF, what a run records of it) runs
for real, in the real image; only the SIF's format is not Apptainer's, and signals
reach the command as bwrap passes them (not at all): preemption tests use the bwrap runtime."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

#: a stand-in SIF's first line; the second names the image folder
MAGIC = b"pyramidrepro stand-in SIF\n"
FLAGS = {"--nv", "--cleanenv", "-e", "--fakeroot", "--writable-tmpfs", "--no-home"}
VALUED = {"--bind": "bind", "-B": "bind", "--env": "env", "--pwd": "pwd", "--build-arg": "build_arg"}


def install(folder: Path, image: Path) -> dict[str, str]:
    """An ``apptainer`` in ``folder`` whose SIFs name ``image``; the variables that put it first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "apptainer"
    script.write_text(f"#!{sys.executable}\nimport runpy\n"
                      f"runpy.run_path({__file__!r}, {{'IMAGE': {str(image)!r}}}, run_name='__main__')\n")
    script.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def _parse(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Apptainer's options before the first operand, and the operands."""
    options: dict[str, list[str]] = {"bind": [], "env": [], "pwd": [], "build_arg": []}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] in VALUED:
            options[VALUED[args[i]]].append(args[i + 1])
            i += 2
        elif args[i] in FLAGS:
            i += 1
        else:
            raise SystemExit(f"apptainer (stand-in): option {args[i]} is not one the package uses")
    return options, args[i:]


def folder_of(sif: str) -> Path:
    with open(sif, "rb") as f:
        if f.readline() != MAGIC:
            raise SystemExit(f"apptainer (stand-in): {sif} is not a stand-in SIF")
        return Path(f.readline().decode().strip())


def _bwrap(sif: str, options: dict[str, list[str]], command: list[str]) -> list[str]:
    from pyramidrepro.config.binds import IMAGE_VENV
    from pyramidrepro.machine.container import HOST_FILES, root_from

    image = folder_of(sif)
    cwd = options["pwd"][-1] if options["pwd"] else os.getcwd()
    cmd = [shutil.which("bwrap") or "bwrap", *root_from(image), "--proc", "/proc", "--dev", "/dev",
           "--bind", "/tmp", "/tmp", "--ro-bind", "/sys", "/sys"]
    cmd += [arg for f in HOST_FILES if Path(f).exists() for arg in ("--ro-bind", f, f)]
    for bind in options["bind"]:
        src, _, dest = bind.partition(":")
        cmd += ["--bind", src, (dest or src).split(":")[0]]
    cmd += ["--bind", cwd, cwd, "--chdir", cwd,
            "--setenv", "PATH", f"{IMAGE_VENV}/bin:/usr/local/bin:/usr/bin:/bin",
            "--setenv", "APPTAINER_CONTAINER", os.path.abspath(sif)]
    for pair in options["env"]:
        key, _, value = pair.partition("=")
        cmd += ["--setenv", key, value]
    for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "LD_PRELOAD"):
        cmd += ["--unsetenv", k]
    return [*cmd, *command]


def main(args: list[str], image: str) -> int:
    """Apptainer's verbs as the package and build.sh use them: ``build [opts] OUT.sif DEF``,
    ``test SIF``, ``exec [opts] SIF CMD...``, ``run [opts] SIF ARGS...``."""
    from pyramidrepro.config.binds import IMAGE_PYTHON

    verb, rest = args[0], args[1:]
    options, operands = _parse(rest)
    if verb == "build":
        Path(operands[0]).write_bytes(MAGIC + image.encode() + b"\n")
        print(f"apptainer (stand-in): {operands[0]} names {image} (built from {operands[1]})", file=sys.stderr)
        return 0
    sif, command = operands[0], operands[1:]
    if verb == "test":
        command = [IMAGE_PYTHON, "-m", "pyramidrepro", "--version"]
    elif verb == "run":
        command = [IMAGE_PYTHON, "-m", "pyramidrepro", *command]
    elif verb != "exec":
        raise SystemExit(f"apptainer (stand-in): {verb} is not a verb the package uses")
    os.execvp(shutil.which("bwrap") or "bwrap", _bwrap(sif, options, command))
    return 127


if __name__ == "__main__":  # the script install() writes runs this file with IMAGE set
    sys.exit(main(sys.argv[1:], IMAGE))  # noqa: F821 - given by runpy.run_path
