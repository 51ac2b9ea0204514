"""What the package reads from Slurm's answers: node sizes, never-starting pending reasons, failed tasks."""

from pyramidrepro.cluster.slurm_queue import (
    Node,
    Request,
    failed_tasks,
    never_starts,
    parse_job_request,
    unsatisfiable,
)
from pyramidrepro.machine.slurm_job import expand_nodelist

NODES = [Node("node1", 2, 2, 23000, "idle", ("debug",)), Node("node2", 2, 2, 23000, "idle", ("debug",)),
         Node("big1", 64, 8, 512000, "drain", ("big",))]


def test_a_request_that_fits_some_node_passes():
    assert unsatisfiable(Request(nodes=2, tasks_per_node=2, cpus_per_task=1, gpus_per_node=2), NODES) is None
    assert unsatisfiable(Request(1, 8, 8, 8, partition="big"), NODES) is None  # drained, yet it exists


def test_a_partition_list_runs_in_any_one_of_its_partitions():
    """``--partition=debug,big``: Slurm starts the job in whichever partition can hold it first."""
    assert unsatisfiable(Request(1, 8, 8, 8, partition="debug,big"), NODES) is None
    assert unsatisfiable(Request(1, 1, 1, partition="debug,other"), NODES) is None
    assert unsatisfiable(Request(1, 128, 1, partition="debug,big"), NODES) == (
        "needs 128 CPUs, 0 GPU(s) and 0 MB on one node; the largest node of debug has 2 CPUs, 2 GPUs, 23000 MB; "
        "needs 128 CPUs, 0 GPU(s) and 0 MB on one node; the largest node of big has 64 CPUs, 8 GPUs, 512000 MB")


def test_a_limit_shared_with_other_jobs_is_waited_on_and_a_per_job_one_is_not():
    from pyramidrepro.cluster.slurm_queue import waits_for

    req = Request(1, 1, 1)
    for shared in ("MaxCpuPerAccount", "QOSGrpCpuLimit", "AssocGrpGRES", "QOSMaxJobsPerUserLimit"):
        assert never_starts(shared, req, NODES) is None, shared
        assert waits_for(shared) == "a user, account or QOS limit to free up as other jobs end"
    assert never_starts("QOSMaxCpuPerJobLimit", req, NODES) == "QOSMaxCpuPerJobLimit"


def test_what_no_node_holds_is_named():
    why = unsatisfiable(Request(1, 2, 2, partition="debug"), NODES)
    assert why == "needs 4 CPUs, 0 GPU(s) and 0 MB on one node; the largest node of debug has 2 CPUs, 2 GPUs, 23000 MB"
    assert unsatisfiable(Request(3, 1, 1, partition="debug"), NODES) == "needs 3 node(s) of that size; debug has 2 of 2"
    assert unsatisfiable(Request(4, 1, 1), NODES) == "needs 4 node(s) of that size; the cluster has 3 of 3"
    assert unsatisfiable(Request(1, 1, 1, gpus_per_node=4, partition="debug"), NODES).startswith("needs 1 CPUs, 4 GPU")
    assert unsatisfiable(Request(1, 1, 1, partition="gpu"), NODES) == "no node is in partition 'gpu'"


def test_never_starting_reasons():
    req = Request(1, 1, 1)
    assert never_starts("PartitionConfig", req, NODES) == "PartitionConfig"
    assert never_starts("QOSMaxCpuPerJobLimit", req, NODES) == "QOSMaxCpuPerJobLimit"
    assert never_starts("Priority", req, NODES) is None
    assert never_starts("QOSMaxJobsPerUserLimit", req, NODES) is None  # clears when the user's jobs end
    assert never_starts("Resources", req, NODES) is None
    assert never_starts("Resources", Request(1, 4, 4, partition="debug"), NODES).startswith("Resources: needs 16 CPUs")
    assert never_starts("Resources", Request(1, 4, 4), NODES) is None  # the drained big1 holds it once returned
    # a required node that is drained comes back when an admin returns it: waited on, like an idle one
    assert never_starts("ReqNodeNotAvail, UnavailableNodes:big1", req, NODES) is None
    assert never_starts("ReqNodeNotAvail, UnavailableNodes:node[1-2]", req, NODES) is None


def test_failed_tasks_from_srun_lines():
    log = ("step 3 loss 2.1\nsrun: error: node3: task 2: Killed\nsrun: Terminating StepId=130.0\n"
           "srun: error: node1: tasks 0-1: Terminated\n")
    assert failed_tasks(log) == [("node3", "2", "Killed"), ("node1", "0-1", "Terminated")]
    assert failed_tasks("all good\n") == []


def test_node_lists_expand():
    assert expand_nodelist("node[1-3]") == ["node1", "node2", "node3"]


def test_a_queued_job_request_is_read_from_scontrol_output():
    text = ("JobId=212 JobName=smoke Partition=short NumNodes=2-2 NumCPUs=4 NumTasks=4 CPUs/Task=1 "
            "MinMemoryNode=4G TresPerNode=gres:gpu:2 Reason=PartitionTimeLimit")
    assert parse_job_request(text) == Request(2, 2, 1, gpus_per_node=2, mem_mb=4096, partition="short")
    bare = parse_job_request("JobId=7 NumNodes=1 NumTasks=1 CPUs/Task=2 MinMemoryNode= Partition=debug")
    assert bare == Request(1, 1, 2, partition="debug")  # an empty memory field is no memory request


def test_make_reproduce_on_a_login_node_says_so_and_nowhere_else(tmp_path):
    """slurm/login-node-hint.sh: one line where sinfo lists nodes and no job holds the shell; nothing on a
    laptop (no sinfo) or inside a job."""
    import os
    import subprocess

    from support import ROOT

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sinfo").write_text("#!/bin/sh\necho 3\n")
    (fake / "sinfo").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    script = str(ROOT / "slurm" / "login-node-hint.sh")

    def hint(path: str, **env: str) -> str:
        r = subprocess.run(["/bin/sh", script], capture_output=True, text=True, env={**base, "PATH": path, **env})
        assert r.returncode == 0, r.stderr
        return r.stdout

    login = hint(f"{fake}:/usr/bin:/bin")
    assert len(login.splitlines()) == 1 and "looks like a cluster's login node" in login
    assert "pyramidrepro submit experiments/fig5.yaml" in login
    assert hint(f"{fake}:/usr/bin:/bin", SLURM_JOB_ID="42") == ""
    laptop = tmp_path / "laptop"  # the tools the script uses, and no sinfo
    laptop.mkdir()
    for tool in ("timeout", "head"):
        (laptop / tool).symlink_to(subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip())
    assert hint(str(laptop)) == ""
