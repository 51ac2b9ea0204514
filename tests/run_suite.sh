#!/usr/bin/env bash
# The suite as two pytest processes side by side (make test):
#   bash tests/run_suite.sh PYTHON
# Much of the suite waits on other processes (ranks, Slurm jobs, the image), so two processes overlap
# it even on 2 cores (three were slower here: 13 min 50 s for the longest against 12 min 5 s).  The
# tests that share one resource run in order in one of them: the Slurm test cluster and the one image
# build (with the bench and boundary tests, to even out the two); everything else, the device
# check's CPU form included, runs in the other.  Their output is kept apart: the first is printed when
# both have ended.
# Each process's torch, and every run the tests start, computes on one thread (OMP_NUM_THREADS, which
# runs take as their default threads): two processes of two threads each on 2 cores wait at every
# parallel region for a thread the other has preempted (one small training run here: 22 s alone and
# 115 s beside two busy processes at two threads; 39 s and 75 s at one).
set -u
export OMP_NUM_THREADS=1
py=${1:?usage: run_suite.sh PYTHON}
cd "$(dirname "$0")/.."
serial=(tests/test_container.py tests/test_follow_lock.py tests/test_multinode.py tests/test_slurm.py
        tests/test_campaign_slurm.py tests/test_login_python.py
        tests/test_submit_requests.py tests/test_bench.py tests/test_boundary.py)
log=$(mktemp "${TMPDIR:-/tmp}/pyramidrepro-suite.XXXXXX")
"$py" -m pytest -q --durations=8 "${serial[@]}" >"$log" 2>&1 &
serial_pid=$!
ignored=()
for f in "${serial[@]}"; do ignored+=("--ignore=$f"); done
echo "suite: ${serial[*]##*/} run in order beside the rest (their output follows at the end)"
rest_rc=0
"$py" -m pytest -q --durations=10 "${ignored[@]}" tests || rest_rc=$?
serial_rc=0
wait "$serial_pid" || serial_rc=$?
echo "--- the Slurm, image, bench and boundary tests:"
cat "$log"
rm -f "$log"
[ "$rest_rc" -eq 0 ] && [ "$serial_rc" -eq 0 ]
