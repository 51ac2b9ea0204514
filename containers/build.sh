#!/usr/bin/env bash
# Build the Apptainer image on a machine that has Apptainer (a login or build node):
#   bash containers/build.sh [OUTPUT.sif]
# then:  apptainer run --nv pyramidrepro.sif run experiments/smoke.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-pyramidrepro.sif}"
command -v apptainer >/dev/null || { echo "build.sh: apptainer not found (https://apptainer.org)" >&2; exit 2; }
# the image has no .git: bake the commit into the package it copies, and take it out afterwards
bash containers/bake_commit.sh src/pyramidrepro
trap 'rm -f src/pyramidrepro/BUILD_COMMIT' EXIT
apptainer build --fakeroot "$out" containers/pyramidrepro.def
apptainer test "$out"
sha256sum "$out"
