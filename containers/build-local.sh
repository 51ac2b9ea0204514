#!/usr/bin/env bash
# Build the image on a machine without Apptainer, as a root-filesystem folder that bwrap (or
# `apptainer exec`, or `apptainer build x.sif FOLDER`) runs.  Same recipe as the Apptainer
# definition: Debian bookworm minbase with containers/packages.txt (mmdebstrap), then
# containers/install.sh inside it, fed from a wheelhouse downloaded on this side.
#
#   bash containers/build-local.sh            build (or reuse) and print the image folder
#   bash containers/build-local.sh --path     print where the image is (or would be); build nothing
#
# The dependency part (6.4 GB; 126-141 s cold on 2 cores with the wheels on a local disk) is
# cached under $PYRAMIDREPRO_IMAGE_CACHE (default /var/tmp/pyramidrepro-images) by the recipe's
# hash, one recipe kept at a time; the package itself is copied in anew on every call (under a
# second).  Needs root, mmdebstrap and bwrap.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${PYRAMIDREPRO_IMAGE_CACHE:-/var/tmp/pyramidrepro-images}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
python=${PYTHON:-python3}
say() { echo "build-local: $*" >&2; }
fail() { say "$*"; exit 2; }

case "${1:-}" in
-h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
--path|"") ;;
*) fail "unknown option $1 (--path, --help)" ;;
esac
recipe=$(bash "$here/install.sh" recipe-hash)
dir=$cache/$recipe
rootfs=$dir/rootfs
if [ "${1:-}" = "--path" ]; then echo "$rootfs"; exit 0; fi

[ "$(id -u)" = 0 ] || fail "needs root (mmdebstrap, and bwrap binding the image read-write)"
for tool in mmdebstrap bwrap; do
    command -v "$tool" >/dev/null || fail "$tool not found: apt-get install mmdebstrap bubblewrap"
done
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9  # one build at a time on this machine

in_image() {  # in_image ROOT ARGS...: run in the image at ROOT, read-write, with no host environment
    local root=$1
    shift
    bwrap --bind "$root" / --dev /dev --proc /proc --tmpfs /tmp --unshare-net --unshare-ipc --unshare-pid \
        --clearenv --setenv PATH /usr/sbin:/usr/bin:/sbin:/bin --setenv HOME /root "$@"
}

if [ ! -f "$dir/base.complete" ] || [ ! -d "$rootfs" ]; then
    t0=$SECONDS
    # the image (6.4 GB) and, while it installs, the wheelhouse (~3 GB); an older image is removed first
    need_gb=11
    free_gb=$(( $(df -Pk "$cache" | awk 'NR==2 {print $4}') / 1048576 + $(du -sk "$cache" | cut -f1) / 1048576 ))
    [ "$free_gb" -ge "$need_gb" ] || fail "a cold build needs ${need_gb} GB free under $cache, there are ${free_gb} GB"
    shopt -s nullglob
    for old in "$cache"/*/; do  # an image is 6 GB: keep the current recipe's only
        [ "$old" = "$dir/" ] || { say "removing the image of an older recipe: $old"; rm -rf "$old"; }
    done
    rm -rf "$dir" && mkdir -p "$dir"
    packages=$(grep -v '^#' "$here/packages.txt" | paste -sd, -)
    say "[1/3] Debian bookworm minbase + $packages (mmdebstrap)"
    mmdebstrap --quiet --variant=minbase --include="$packages" bookworm "$rootfs.new" "$mirror"
    # mmdebstrap copies this machine's resolver and apt sources: neither belongs in the image
    rm -f "$rootfs.new/etc/resolv.conf" "$rootfs.new/etc/apt/sources.list"
    find "$rootfs.new/etc/apt/sources.list.d" -type f -delete
    image_python=$(chroot "$rootfs.new" python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    say "[2/3] wheels of containers/requirements.lock for Python $image_python (pip download)"
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version "$image_python" \
        -d "$dir/wheels" -r "$here/requirements.lock" 2> >(grep -v "is ignored: it is neither" >&2)
    say "[3/3] /opt/venv from the wheels, inside the image"
    mkdir -p "$rootfs.new/opt/pyramidrepro/containers"
    cp "$here/install.sh" "$here/packages.txt" "$here/requirements.lock" "$here/requirements-cu128.lock" \
        "$rootfs.new/opt/pyramidrepro/containers/"
    in_image "$rootfs.new" --ro-bind "$dir/wheels" /tmp/wheels \
        bash /opt/pyramidrepro/containers/install.sh deps --wheels /tmp/wheels
    rm -rf "$dir/wheels"
    say "hashing the image's files for its manifest"
    (cd "$rootfs.new" && {
        find . -path ./opt/pyramidrepro -prune -o -type f -print0 | xargs -0 -r -P 2 -n 256 sha256sum
        find . -path ./opt/pyramidrepro -prune -o -type l -printf '%p -> %l\n'
    } | LC_ALL=C sort -k2 >"$dir/base.sha256")
    mv "$rootfs.new" "$rootfs"
    echo "$((SECONDS - t0))" >"$dir/base.complete"
    say "dependencies built in $((SECONDS - t0)) s, $(du -sh "$rootfs" | cut -f1)"
else
    say "dependencies: cached ($rootfs, built in $(cat "$dir/base.complete") s)"
fi

# the package, anew: source, recipe and baked commit, then the manifest over everything
pkg=$rootfs/opt/pyramidrepro
rm -rf "$pkg/src" "$pkg/containers" "$pkg/IMAGE_INFO.json" "$pkg/MANIFEST.sha256"
mkdir -p "$pkg/src" "$pkg/containers"
cp -r "$repo/src/pyramidrepro" "$pkg/src/"
cp -r "$repo/experiments" "$pkg/src/pyramidrepro/experiments"  # pyramidrepro.experiments, as pyproject maps it
find "$pkg/src" -name __pycache__ -prune -exec rm -rf {} +
for f in hosts resolv.conf; do  # empty files the runtimes bind the host's over
    [ -e "$rootfs/etc/$f" ] || : >"$rootfs/etc/$f"
done
cp "$here/install.sh" "$here/packages.txt" "$here/requirements.lock" "$here/requirements-cu128.lock" "$pkg/containers/"
commit=$(bash "$here/bake_commit.sh" "$pkg/src/pyramidrepro" "$repo")
in_image "$rootfs" bash /opt/pyramidrepro/containers/install.sh package >&2
(cd "$rootfs" && { cat "$dir/base.sha256"; find ./opt/pyramidrepro -type f -print0 | xargs -0 sha256sum; } \
    | LC_ALL=C sort -k2 >"$pkg/MANIFEST.sha256")
say "image ready: commit $commit, recipe $recipe, manifest sha256:$(sha256sum "$pkg/MANIFEST.sha256" | cut -d' ' -f1)"
echo "$rootfs"
