"""``pyramidrepro data fetch``: put CIFAR-10 where compute nodes (which have no internet) read it."""

from __future__ import annotations

import argparse
import re
import sys

from ..config.errors import ConfigError, shown
from ..workload.cifar_files import ARCHIVE_NAME, ARCHIVE_URL, BATCHES_DIR
from ._types import positive_float

FETCH_DESCRIPTION = f"""\
Download the official CIFAR-10 archive ({ARCHIVE_NAME}) into DIR and unpack it as
DIR/{BATCHES_DIR}/. Run it on a machine with internet, such as a cluster's login node; compute nodes, which have none,
then read DIR (data.root: DIR). The archive's MD5 is checked before anything is unpacked, and only
the expected batch files are unpacked. Nothing half-written ever stands where a run looks: the
download goes to a hidden partial file and the unpacked folder is renamed into place whole. It can
be rerun: a complete folder is kept and nothing downloaded (--force fetches again), and the
leftovers of an interrupted try are removed first. A problem (DIR is a file, a bad --md5, a URL
that cannot be reached, an MD5 mismatch) is one line on stderr, exit status 2, nothing left behind."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``data`` (and its ``fetch``) to ``sub``."""
    p = sub.add_parser("data", help="get CIFAR-10 onto this machine's disk (data fetch)",
                       description="Datasets: `data fetch` downloads CIFAR-10 for machines without internet.")
    actions = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = actions.add_parser(
        "fetch", help="download, verify and unpack CIFAR-10 into a folder (run it where there is internet)",
        description=FETCH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("--root", required=True, metavar="DIR",
                       help="the folder to put CIFAR-10 in (made if missing): the runs' data.root")
    fetch.add_argument("--url", default=ARCHIVE_URL,
                       help=f"where to download the archive (default: the official {ARCHIVE_URL}; a mirror, "
                            "or file:///path/to/archive)")
    fetch.add_argument("--md5", default=None, metavar="HEX",
                       help="the archive's expected MD5, 32 hex digits (default: the official archive's)")
    fetch.add_argument("--force", action="store_true",
                       help="download and unpack again even when DIR holds the complete folder")
    fetch.add_argument("--timeout", type=positive_float, default=60.0, metavar="SECONDS",
                       help="give up when the server sends nothing for this long (default 60)")
    fetch.set_defaults(func=cmd_fetch)


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch into ``--root``; what it does on stdout (a problem: one line on stderr)."""
    from pathlib import Path

    from ..workload.fetch import OFFICIAL_ARCHIVE_MD5, fetch_cifar10

    md5 = OFFICIAL_ARCHIVE_MD5 if args.md5 is None else args.md5.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise ConfigError("data fetch", "--md5", f"not an MD5 (32 hex digits): {shown(args.md5)}")
    root = Path(args.root)
    folder = fetch_cifar10(root, args.url, md5, progress=sys.stdout, force=args.force, timeout=args.timeout)
    print(f"CIFAR-10 ready in {folder}")
    print(f"runs read it with data.root: {root}")
    return 0
