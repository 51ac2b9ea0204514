#!/bin/sh
# A Slurm task's command when its run is in an image:
#     /bin/sh relay.sh [--outlive-signals] CONTAINER_COMMAND...
#
# submitit requeues a preempted or timed-out job by calling `scontrol requeue` from the job's own
# process, which here is inside the image, where no Slurm client is.  Inside, the image's own
# `scontrol` (this folder's stub, first on the PATH that clean_env.py sets when
# PYRAMIDREPRO_RELAY_REQUEST is there) writes the request to a file and waits for its answer; on the
# host, a watcher started here runs it with the node's `scontrol` at once and writes back its exit
# status, which the stub returns to submitit.  The run's `scontrol -o show node NAME` (what it records
# of the node's other jobs, machine/system.py) is relayed the same way, its output with it.
#
# This shell then replaces itself with the container command, so the task's process is the runtime's,
# as without the relay: where Slurm signals only the task's own process (proctrack/cgroup), Apptainer
# gets SIGTERM and submitit's signal and forwards them to the run.  --outlive-signals (bubblewrap,
# which forwards nothing and would die of them) makes the runtime's process ignore both: that is only
# right where Slurm signals every process of the step (proctrack/linuxproc), the run included.
here=$(cd "$(dirname "$0")" && pwd)
request="$here/request.${SLURM_JOB_ID:-0}.${SLURM_PROCID:-0}"
rm -f "$request" "$request.rc"
PYRAMIDREPRO_RELAY_REQUEST=$request
export PYRAMIDREPRO_RELAY_REQUEST
task=$$

answer() {  # answer REQUEST_LINE: run a requeue request, print its exit status
    set -- $1
    case "$#:$1:${2:-}" in
    2:requeue:[0-9]*)
        echo "relay.sh: the run in the image asked to requeue job $2: scontrol requeue $2" >&2
        scontrol requeue "$2" >&2
        echo "$?"
        ;;
    2:node:*[!A-Za-z0-9._-]*)
        echo "relay.sh: refused a node name with other characters: $2" >&2
        echo 2
        ;;
    2:node:?*)  # Slurm's view of the node (a run records whether other jobs share it)
        scontrol -o show node "$2" >"$request.out" 2>/dev/null
        echo "$?"
        ;;
    *)
        echo "relay.sh: refused a request that is not 'requeue JOB' or 'node NAME': $*" >&2
        echo 2
        ;;
    esac
}

task_lives() {  # the task's process is there and not a zombie waiting for its parent (Linux /proc);
    kill -0 "$task" 2>/dev/null || return 1  # builtins only: the watcher forks nothing but its sleep
    while read -r key value _; do
        [ "$key" = "State:" ] && { [ "$value" != Z ]; return; }
    done <"/proc/$task/status" 2>/dev/null
    return 0
}

(   # the watcher: as long as the task's process lives, answer what the stub writes
    trap '' TERM INT HUP USR1 USR2  # where Slurm signals every process, those are for the run
    set -f                          # a request's words are never file patterns
    while task_lives; do
        if [ -f "$request" ]; then
            line=$(cat "$request")
            rm -f "$request"
            answer "$line" >"$request.rc.tmp"
            mv "$request.rc.tmp" "$request.rc"
        fi
        sleep 1  # a requeue waits at most a second more; the job's whole life costs one fork a second
    done
) </dev/null >/dev/null &

if [ "${1:-}" = --outlive-signals ]; then
    shift
    trap '' TERM "${SUBMITIT_PREEMPT_SIGNAL:-USR2}"
fi
exec "$@"
