#!/usr/bin/env bash
# The image's install steps, run INSIDE the image by both builders: the Apptainer definition's
# %post (containers/pyramidrepro.def) and the local builder (containers/build-local.sh).
#
#   install.sh deps [--wheels DIR] [--line cu130|cu128]
#                                    /opt/venv with every package of the line's lock (cu130, the
#                                    default: requirements.lock; cu128: requirements-cu128.lock), from
#                                    DIR offline, else from the package index; the launcher and the
#                                    path to the package source
#   install.sh package               check /opt/pyramidrepro/src and record what the image is in
#                                    /opt/pyramidrepro/IMAGE_INFO.json (baked commit, recipe, date,
#                                    the package's version and config schema, the CUDA line)
#   install.sh recipe-hash           sha256 of the recipe (this script, packages.txt, the locks):
#                                    the key a built image is cached under
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=/opt/venv
home=/opt/pyramidrepro

recipe_hash() {
    cat "$here/install.sh" "$here/packages.txt" "$here/requirements.lock" "$here/requirements-cu128.lock" |
        sha256sum | cut -c1-16
}

case "${1:-}" in
recipe-hash)
    recipe_hash
    ;;
deps)
    shift
    pip_source=()
    line=cu130
    while [ $# -gt 0 ]; do
        case $1 in
        --wheels)
            [ -d "${2:-}" ] || { echo "install.sh: --wheels ${2:-}: no such folder" >&2; exit 2; }
            pip_source+=(--no-index --find-links "$2"); shift 2 ;;
        --line) line=${2:-}; shift 2 ;;
        *) echo "install.sh: deps: unknown option $1" >&2; exit 2 ;;
        esac
    done
    case $line in
    cu130)  # --no-deps: the lock names every package; pip check below proves it complete
        lock=$here/requirements.lock; deps=(--no-deps) ;;
    cu128)  # torch's CUDA 12 wheel pins the CUDA libraries it was built with (the lock's header says why)
        lock=$here/requirements-cu128.lock; deps=()
        pip_source+=(--extra-index-url https://download.pytorch.org/whl/cu128) ;;
    *) echo "install.sh: --line $line: expected cu130 (CUDA 13, driver >= 580) or cu128 (CUDA 12, driver >= 525)" >&2
       exit 2 ;;
    esac
    python3 -m venv "$venv"
    # no pip cache: its downloads (GBs of CUDA wheels) would end up in the image
    "$venv/bin/python" -m pip install -q --no-cache-dir "${deps[@]}" "${pip_source[@]}" -r "$lock"
    "$venv/bin/python" -m pip check
    mkdir -p "$home"
    echo "$line" >"$home/CUDA_LINE"
    "$venv/bin/python" -m pip freeze --all >"$home/requirements.installed"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$home/src" >"$site/pyramidrepro.pth"
    printf '#!/bin/sh\nexec %s -m pyramidrepro "$@"\n' "$venv/bin/python" >"$venv/bin/pyramidrepro"
    chmod 755 "$venv/bin/pyramidrepro"
    ;;
package)
    [ -f "$home/src/pyramidrepro/__init__.py" ] || { echo "install.sh: no package under $home/src" >&2; exit 2; }
    commit=$(cat "$home/src/pyramidrepro/BUILD_COMMIT" 2>/dev/null || echo unknown)
    "$venv/bin/python" -m compileall -q "$home/src"
    line=$(cat "$home/CUDA_LINE" 2>/dev/null || echo cu130)
    "$venv/bin/python" - "$commit" "$(recipe_hash)" "$home/IMAGE_INFO.json" "$home/src" "$line" <<'EOF'
import json, sys, time
commit, recipe, path, src, line = sys.argv[1:]
sys.path.insert(0, src)
import pyramidrepro
from pyramidrepro.config.experiment import schema_digest
# the config schema: submit compares it with the login node's before queueing (machine/image_match.py)
info = {"commit": commit, "recipe": recipe, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "version": pyramidrepro.__version__, "config_schema": schema_digest(), "cuda_line": line}
with open(path, "w") as fh:
    json.dump(info, fh)
EOF
    "$venv/bin/pyramidrepro" --version
    ;;
*)
    echo "usage: install.sh deps [--wheels DIR] | package | recipe-hash" >&2
    exit 2
    ;;
esac
