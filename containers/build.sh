#!/usr/bin/env bash
# Build the Apptainer image on a machine that has Apptainer (a login or build node, or a laptop):
#   bash containers/build.sh [OUTPUT.sif]     unprivileged (--fakeroot), from debian:bookworm-slim
#   CUDA_LINE=cu128 bash containers/build.sh  the CUDA 12 line, for nodes with a driver older than 580
#   sudo FAKEROOT= DEF=containers/pyramidrepro-debootstrap.def bash containers/build.sh [OUTPUT.sif]
#                                             as root, with debootstrap, without a registry
# then:  pyramidrepro submit EXPERIMENT --container OUTPUT.sif   or   apptainer run --nv OUTPUT.sif run ...
# The same recipe (containers/install.sh) as containers/build-local.sh, which builds it without Apptainer.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-pyramidrepro.sif}"
def="${DEF:-containers/pyramidrepro.def}"
# the image's CUDA line: cu130 (CUDA 13, NVIDIA driver >= 580.65.06) or cu128 (CUDA 12.8, driver >= 525.60.13)
line="${CUDA_LINE:-cu130}"
case $line in
    cu130|cu128) ;;
    *) echo "build.sh: CUDA_LINE=$line: expected cu130 (driver >= 580) or cu128 (driver >= 525)" >&2; exit 2 ;;
esac
command -v apptainer >/dev/null || { echo "build.sh: apptainer not found (https://apptainer.org); without it: make image" >&2; exit 2; }
[ -f "$def" ] || { echo "build.sh: DEF=$def: no such definition" >&2; exit 2; }
# Apptainer unpacks the whole root file system in its temporary folder (default /tmp): on a login node
# that must be local disk with room for it. NFS or Lustre there (a home or scratch folder) fails late
# or crawls, and with --fakeroot often fails outright (no subuid mapping on a network file system).
export APPTAINER_TMPDIR=${APPTAINER_TMPDIR:-/var/tmp/apptainer-$(id -un)}
mkdir -p "$APPTAINER_TMPDIR"
fs=$(stat -f -c %T "$APPTAINER_TMPDIR")
case $fs in
    nfs*|lustre|gpfs|beegfs|cifs|smb*|fuse*|ceph*|panfs|afs)
        echo "build.sh: APPTAINER_TMPDIR=$APPTAINER_TMPDIR is on $fs, a network file system: the build unpacks" \
             "the image there and fails or crawls; set APPTAINER_TMPDIR to a folder on local disk (/var/tmp, /tmp)" >&2
        exit 2 ;;
esac
need_gb=${PYRAMIDREPRO_BUILD_MIN_GB:-11}  # the unpacked root file system, the SIF and pip's downloads
for dir in "$APPTAINER_TMPDIR" "$(dirname "$out")"; do
    free_gb=$(( $(df -Pk "$dir" | awk 'NR==2 {print $4}') / 1048576 ))
    if [ "$free_gb" -lt "$need_gb" ]; then
        echo "build.sh: $dir has $free_gb GB free, the build needs about $need_gb GB there" >&2
        exit 2
    fi
done
# the image has no .git: bake the commit into the package it copies, and take it out afterwards
bash containers/bake_commit.sh src/pyramidrepro
trap 'rm -f src/pyramidrepro/BUILD_COMMIT' EXIT
# --fakeroot unless FAKEROOT is set empty (root builds; debootstrap fails under --fakeroot)
apptainer build ${FAKEROOT---fakeroot} --build-arg CUDA_LINE="$line" "$out" "$def"
apptainer test "$out"
# its digest beside it: runs and submits read it instead of hashing a multi-GB file per job.  The
# second line ties it to this SIF's size and its first and last MiB (not to the files' ages: a copy
# may write the digest file before the SIF), so a rebuilt or damaged SIF is never given this digest.
sample=$({ head -c 1048576 "$out"; tail -c 1048576 "$out"; } | sha256sum | cut -d' ' -f1)
{ sha256sum "$out"; echo "# size=$(stat -c %s "$out") sample=$sample"; } | tee "$out.sha256"
