#!/bin/sh
# make reproduce runs the campaign on this machine's own CPUs or GPUs. On a cluster's login node that is
# rarely what was meant (and often against the site's rules): where sinfo answers and no Slurm job holds
# this shell, say so in one line, with the command that runs the campaign on the cluster instead.
# Laptops (no sinfo) and jobs (SLURM_JOB_ID set) see nothing.
[ -n "${SLURM_JOB_ID:-}" ] && exit 0
command -v sinfo >/dev/null 2>&1 || exit 0
nodes=$(timeout 5 sinfo -h -o %D 2>/dev/null | head -n 1) || exit 0
[ -n "$nodes" ] || exit 0
echo "make reproduce: this looks like a cluster's login node (sinfo lists nodes): the campaign below runs on" \
     "this machine; to run it on the cluster: pyramidrepro submit experiments/fig5.yaml --wait (REPRODUCE.md," \
     "section 2)"
