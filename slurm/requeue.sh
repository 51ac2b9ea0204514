# Sourced by the sbatch templates: run a command so that the job survives its time limit.
#
#   #SBATCH --signal=B:USR1@120   (in the template) Slurm warns this batch shell 2 min before the limit
#   requeueable CMD ...            runs CMD; on the warning, CMD gets SIGTERM (the run checkpoints and
#                                  ends interrupted, exit 143) and the job requeues itself, then
#                                  resumes in the same RUN_DIR
#
# The requeue is asked here, in the batch shell on the host, where Slurm's client is: inside an
# image (IMAGE=...) there is none.  A preemption (Slurm's own requeue) or a cancel sends SIGTERM to
# the run as well; only the time-limit warning makes this shell requeue, so a cancelled job stays
# cancelled, and resubmitting it with the same RUN_DIR resumes it there.
requeueable() {
    local rc=0
    _requeue_warned=0
    _requeue_via_srun=0
    [ "$1" = srun ] && _requeue_via_srun=1
    "$@" &
    _requeue_pid=$!
    trap _requeue_stop USR1
    while :; do  # a trapped signal ends `wait` early: wait again until the command has ended
        rc=0
        wait "$_requeue_pid" || rc=$?
        kill -0 "$_requeue_pid" 2>/dev/null || break
    done
    trap - USR1
    if [ "$_requeue_warned" = 1 ]; then
        echo "requeue.sh: the run ended with exit $rc; requeueing job $SLURM_JOB_ID to resume in $RUN_DIR" >&2
        scontrol requeue "$SLURM_JOB_ID"
        return 0
    fi
    return "$rc"
}

_requeue_stop() {  # SIGTERM to the run: srun would end its step at once, so its tasks get it from scancel
    _requeue_warned=1
    echo "requeue.sh: time limit near: stopping the run at its next step" >&2
    if [ "$_requeue_via_srun" = 1 ]; then
        scancel --signal=TERM "$SLURM_JOB_ID"  # every step's tasks, not this batch shell
    else
        kill -TERM "$_requeue_pid" 2>/dev/null
    fi
}
