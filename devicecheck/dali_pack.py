"""The DALI wheel carried to a machine without internet, in parts small enough for one transfer each.

    python devicecheck/dali_pack.py pack .dali_pack            # here: download, split, write MANIFEST.json
    python devicecheck/dali_pack.py unpack .dali_pack DEST     # there: check, join, verify, extract into DEST
    PYTHONPATH=DEST:$PYTHONPATH python -c "import nvidia.dali"

``pack`` downloads the DALI wheel of the version installed here (``--version`` to choose) with pip,
without its NVIDIA-library dependencies (nvImageCodec, nvCOMP: loaded only by decoders the
package does not use), plus the small Python wheels it imports, built for the target machine's
Python (``--python-version``, 3.12 on the device image).  The DALI wheel is cut into parts of at most
``--part-mib`` MiB; ``MANIFEST.json`` lists every file with its size and sha256 and the transfer
plan: which files go together in one transfer of at most ``--carry-mib`` MiB.

``unpack`` refuses (one line, exit 2, nothing extracted) a missing part, a part or wheel whose
sha256 differs from the manifest's, or a joined wheel of the wrong size; else it extracts the wheels
into DEST (a wheel is a zip archive), with ``nvidia/__init__.py`` extending the ``nvidia`` namespace
so that the image's own ``nvidia.*`` packages still import beside ``nvidia.dali``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MANIFEST = "MANIFEST.json"
MIB = 2**20
NAMESPACE_INIT = "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n"


class PackError(Exception):
    """What is wrong with a pack, in one line."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry(path: Path) -> dict:
    return {"name": path.name, "size": path.stat().st_size, "sha256": sha256(path)}


def split(wheel: Path, out: Path, part_bytes: int) -> list[dict]:
    """Cut ``wheel`` into ``<name>.partNN`` files of at most ``part_bytes`` in ``out``."""
    parts = []
    with wheel.open("rb") as f:
        for n, chunk in enumerate(iter(lambda: f.read(part_bytes), b"")):
            part = out / f"{wheel.name}.part{n:02d}"
            part.write_bytes(chunk)
            parts.append(_entry(part))
    return parts


def transfers(files: list[dict], carry_bytes: int) -> list[list[str]]:
    """The files grouped, in order, into transfers of at most ``carry_bytes`` each."""
    groups: list[list[str]] = [[]]
    used = 0
    for f in files:
        if f["size"] > carry_bytes:
            raise PackError(f"{f['name']} ({f['size']} bytes) is larger than one transfer ({carry_bytes})")
        if used + f["size"] > carry_bytes and groups[-1]:
            groups.append([])
            used = 0
        groups[-1].append(f["name"])
        used += f["size"]
    return groups


def write_pack(wheel: Path, deps: list[Path], out: Path, part_bytes: int, carry_bytes: int) -> dict:
    """Split ``wheel`` and copy ``deps`` into ``out``, with the manifest; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    parts = split(wheel, out, part_bytes)
    dep_entries = []
    for dep in deps:
        shutil.copy2(dep, out / dep.name)
        dep_entries.append(_entry(out / dep.name))
    manifest = {"wheel": _entry(wheel), "parts": parts, "deps": dep_entries,
                "transfers": transfers(dep_entries + parts, carry_bytes)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _pip_download(args: list[str], dest: Path) -> list[Path]:
    before = set(dest.iterdir())
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(dest), *args], check=True)
    return sorted(set(dest.iterdir()) - before)


def python_dependencies(wheel: Path) -> list[str]:
    """The wheel's requirements other than NVIDIA's libraries (and numpy, which torch brings)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Requires-Dist:")]
    return [r for r in reqs if "extra ==" not in r and not re.match(r"(nvidia-|numpy)", r)]


def cmd_pack(args: argparse.Namespace) -> int:
    version = args.version or __import__("nvidia.dali", fromlist=["__version__"]).__version__
    with tempfile.TemporaryDirectory() as tmp:
        dl = Path(tmp)
        (wheel,) = _pip_download(["--no-deps", f"nvidia-dali-cuda130=={version}"], dl)
        target = ["--only-binary=:all:", "--python-version", args.python_version,
                  "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64"]
        deps = _pip_download([*target, *python_dependencies(wheel)], dl)
        manifest = write_pack(wheel, deps, Path(args.out), args.part_mib * MIB, args.carry_mib * MIB)
    for i, group in enumerate(manifest["transfers"], 1):
        print(f"transfer {i}: {' '.join(group)}")
    return 0


def check_pack(pack: Path) -> dict:
    """The manifest, once every listed file is there with its size and sha256 (PackError otherwise)."""
    try:
        manifest = json.loads((pack / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise PackError(f"{pack / MANIFEST}: cannot be read ({exc})") from None
    for i, entry in enumerate(manifest["parts"] + manifest["deps"]):
        path = pack / entry["name"]
        if not path.is_file():
            raise PackError(f"{path}: missing (file {i + 1} of the manifest; was every transfer made?)")
        if path.stat().st_size != entry["size"] or sha256(path) != entry["sha256"]:
            raise PackError(f"{path}: sha256 or size differs from the manifest's (a damaged transfer: send it again)")
    return manifest


def join(pack: Path, manifest: dict, dest: Path) -> Path:
    """The wheel rebuilt from its parts in ``dest``, its sha256 checked against the manifest."""
    wheel = dest / manifest["wheel"]["name"]
    with wheel.open("wb") as out:
        for entry in manifest["parts"]:
            with (pack / entry["name"]).open("rb") as part:
                shutil.copyfileobj(part, out, MIB)
    if sha256(wheel) != manifest["wheel"]["sha256"]:
        raise PackError(f"{wheel.name}: the joined wheel's sha256 differs from the manifest's")
    return wheel


def extract(wheels: list[Path], dest: Path) -> None:
    """Each wheel's files into ``dest`` (a wheel is a zip archive), the ``nvidia`` namespace extended."""
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(dest)
    if (dest / "nvidia").is_dir():
        (dest / "nvidia" / "__init__.py").write_text(NAMESPACE_INIT)


def cmd_unpack(args: argparse.Namespace) -> int:
    pack, dest = Path(args.pack), Path(args.dest)
    manifest = check_pack(pack)
    with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.is_dir() else None) as tmp:
        staging = Path(tmp) / "site"
        staging.mkdir()
        wheel = join(pack, manifest, Path(tmp))
        extract([wheel, *(pack / d["name"] for d in manifest["deps"])], staging)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    print(f"dali_pack: {manifest['wheel']['name']} ({len(manifest['parts'])} parts, sha256 ok) and "
          f"{len(manifest['deps'])} wheel(s) extracted into {dest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="download DALI and its Python wheels, split, write the manifest")
    pk.add_argument("out")
    pk.add_argument("--version", help="DALI version (default: the one installed here)")
    pk.add_argument("--python-version", default="3.12", help="the target machine's Python (default: 3.12)")
    pk.add_argument("--part-mib", type=int, default=48, help="largest part (default: 48 MiB)")
    pk.add_argument("--carry-mib", type=int, default=60, help="largest transfer (default: 60 MiB)")
    pk.set_defaults(func=cmd_pack)
    up = sub.add_parser("unpack", help="check, join and verify the parts; extract the wheels into DEST")
    up.add_argument("pack")
    up.add_argument("dest")
    up.set_defaults(func=cmd_unpack)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except PackError as exc:
        print(f"dali_pack: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
