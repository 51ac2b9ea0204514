#!/bin/sh
# A Slurm task's command when its run is in an image: relay.sh CONTAINER_COMMAND...
#
# submitit requeues a preempted or timed-out job by calling `scontrol requeue` from the job's own
# process, which here is inside the image, where no Slurm client is.  The `scontrol` beside this file
# goes first on the image's PATH (clean_env.py reads PYRAMIDREPRO_RELAY_BIN); it only writes the
# request to a file, and this shell, on the host, runs it once the run has checkpointed and exited.
#
# Slurm signals every process of a job step (proctrack), so the run inside gets the preemption
# SIGTERM and submitit's signal itself: this shell and the runtime's own process between only have to
# outlive them, which they do by ignoring both (the run's Python installs its own handlers).
here=$(cd "$(dirname "$0")" && pwd)
request="$here/request.${SLURM_JOB_ID:-0}.${SLURM_PROCID:-0}"
rm -f "$request"
PYRAMIDREPRO_RELAY_BIN=$here
PYRAMIDREPRO_RELAY_REQUEST=$request
export PYRAMIDREPRO_RELAY_BIN PYRAMIDREPRO_RELAY_REQUEST
trap '' TERM "${SUBMITIT_PREEMPT_SIGNAL:-USR2}"
"$@"
rc=$?
if [ -f "$request" ]; then
    read -r verb job <"$request"
    rm -f "$request"
    case "$verb:$job" in
    requeue:[0-9]*)
        echo "relay.sh: the run in the image asked to requeue job $job (exit $rc): scontrol requeue $job" >&2
        scontrol requeue "$job" || rc=$?
        ;;
    *) echo "relay.sh: ignored a request that is not 'requeue JOB': $verb $job" >&2 ;;
    esac
fi
exit "$rc"
