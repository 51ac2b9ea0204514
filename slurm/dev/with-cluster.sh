#!/usr/bin/env bash
# Run a command with the local Slurm test cluster up (when it can be started), then stop it.
# Without root/apt or Slurm, the command runs alone and the Slurm tests skip with a reason.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
started=0
if bash "$here/cluster.sh" start; then
    started=1
    eval "$(bash "$here/cluster.sh" env)"
else
    echo "with-cluster: local Slurm cluster not started; Slurm tests will be skipped" >&2
fi
"$@"
rc=$?
if [ "$started" = 1 ]; then bash "$here/cluster.sh" stop || true; fi
exit $rc
