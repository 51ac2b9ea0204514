#!/usr/bin/env bash
# The suite as three pytest processes side by side (make test):
#   bash tests/run_suite.sh PYTHON
# Much of the suite waits on other processes (ranks, Slurm jobs, the image): two processes kept the
# 2 cores 124 % busy of 200 %, so a third fills the waits.  The tests that share one resource, the
# Slurm test cluster and the one image build, run in order in the first; the device check's CPU
# form, the bench, the campaign and the DDP launcher tests (the longest of the others) in the second;
# everything else in the third.  The output of the first two is printed when all have ended.
# Each process's torch, and every run the tests start, computes on one thread (OMP_NUM_THREADS, which
# runs take as their default threads): processes of two threads each on 2 cores wait at every
# parallel region for a thread another has preempted (one small training run here: 22 s alone and
# 115 s beside two busy processes at two threads; 39 s and 75 s at one).
set -u
export OMP_NUM_THREADS=1
py=${1:?usage: run_suite.sh PYTHON}
cd "$(dirname "$0")/.."
cluster=(tests/test_container.py tests/test_follow_lock.py tests/test_multinode.py tests/test_slurm.py
         tests/test_submit_requests.py)
long=(tests/test_gpu_check.py tests/test_bench.py tests/test_architecture.py tests/test_parallel.py
      tests/test_step_profile.py)
logs=()
pids=()
for group in cluster long; do
    declare -n files=$group
    log=$(mktemp "${TMPDIR:-/tmp}/pyramidrepro-suite.XXXXXX")
    "$py" -m pytest -q --durations=8 "${files[@]}" >"$log" 2>&1 &
    logs+=("$log")
    pids+=($!)
done
ignored=()
for f in "${cluster[@]}" "${long[@]}"; do ignored+=("--ignore=$f"); done
echo "suite: ${cluster[*]##*/} in order, and ${long[*]##*/}, beside the rest (their output follows at the end)"
rc=0
"$py" -m pytest -q --durations=8 "${ignored[@]}" tests || rc=$?
titles=("the Slurm and image tests" "the device check, bench, campaign and launcher tests")
for i in 0 1; do
    wait "${pids[$i]}" || rc=1
    echo "--- ${titles[$i]}:"
    cat "${logs[$i]}"
    rm -f "${logs[$i]}"
done
exit "$rc"
