#!/usr/bin/env bash
# Write the source tree's commit (with "-dirty" when tracked files differ) into a copy of the
# package, so a run inside an image built from it records where it came from (there is no .git
# in the image).   bash containers/bake_commit.sh PACKAGE_DIR [REPO_DIR]
set -euo pipefail
pkg=${1:?usage: bake_commit.sh PACKAGE_DIR [REPO_DIR]}
repo=${2:-$(dirname "$0")/..}
[ -d "$pkg" ] || { echo "bake_commit.sh: $pkg: no such package folder" >&2; exit 2; }
commit=$(git -C "$repo" rev-parse HEAD 2>/dev/null) || { echo "bake_commit.sh: $repo is not a git checkout" >&2; exit 2; }
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
    commit="$commit-dirty"
fi
echo "$commit" >"$pkg/BUILD_COMMIT"
echo "$commit"
