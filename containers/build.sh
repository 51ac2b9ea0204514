#!/usr/bin/env bash
# Build the Apptainer image on a machine that has Apptainer (a login or build node, or a laptop):
#   bash containers/build.sh [OUTPUT.sif]     unprivileged (--fakeroot), from debian:bookworm-slim
#   sudo FAKEROOT= DEF=containers/pyramidrepro-debootstrap.def bash containers/build.sh [OUTPUT.sif]
#                                             as root, with debootstrap, without a registry
# then:  pyramidrepro submit EXPERIMENT --container OUTPUT.sif   or   apptainer run --nv OUTPUT.sif run ...
# The same recipe (containers/install.sh) as containers/build-local.sh, which builds it without Apptainer.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-pyramidrepro.sif}"
def="${DEF:-containers/pyramidrepro.def}"
command -v apptainer >/dev/null || { echo "build.sh: apptainer not found (https://apptainer.org); without it: make image" >&2; exit 2; }
[ -f "$def" ] || { echo "build.sh: DEF=$def: no such definition" >&2; exit 2; }
# the image has no .git: bake the commit into the package it copies, and take it out afterwards
bash containers/bake_commit.sh src/pyramidrepro
trap 'rm -f src/pyramidrepro/BUILD_COMMIT' EXIT
# --fakeroot unless FAKEROOT is set empty (root builds; debootstrap fails under --fakeroot)
apptainer build ${FAKEROOT---fakeroot} "$out" "$def"
apptainer test "$out"
# its digest beside it: runs and submits read it instead of hashing a multi-GB file per job
sha256sum "$out" | tee "$out.sha256"
