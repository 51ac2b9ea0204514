#!/usr/bin/env bash
# The suite as two pytest processes side by side (make test):
#   bash tests/run_suite.sh PYTHON
# Much of the suite waits on other processes (ranks, Slurm jobs, the image), so two processes overlap
# it even on 2 cores.  The tests that share one resource, the Slurm test cluster or the one image
# build, run in order in one process, selected by their markers (`slurm`, `image`: conftest.py makes
# sure a test that reaches either carries its marker); everything else runs in the other.  Their
# output is kept apart: the first is printed when both have ended.
# Each process's torch, and every run the tests start, computes on one thread (OMP_NUM_THREADS, which
# runs take as their default threads): two processes of two threads each on 2 cores wait at every
# parallel region for a thread the other has preempted (one small training run here: 22 s alone and
# 115 s beside two busy processes at two threads; 39 s and 75 s at one).
set -u
export OMP_NUM_THREADS=1
py=${1:?usage: run_suite.sh PYTHON}
cd "$(dirname "$0")/.."
shared="slurm or image"
log=$(mktemp "${TMPDIR:-/tmp}/pyramidrepro-suite.XXXXXX")
"$py" -m pytest -q --durations=8 -m "$shared" tests >"$log" 2>&1 &
shared_pid=$!
echo "suite: the tests marked '$shared' run in order beside the rest (their output follows at the end)"
rest_rc=0
"$py" -m pytest -q --durations=10 -m "not ($shared)" tests || rest_rc=$?
shared_rc=0
wait "$shared_pid" || shared_rc=$?
echo "--- the tests marked '$shared':"
cat "$log"
rm -f "$log"
[ "$rest_rc" -eq 0 ] && [ "$shared_rc" -eq 0 ]
