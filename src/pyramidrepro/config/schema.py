"""The names in a run's ``metrics.h5``: its status vocabulary, root attributes, summary attributes
and row fields.  Every writer and reader imports them from here; the writer refuses any other name.

The enums are ``str`` subclasses, so ``Attr.MODE == "mode"`` and a name reads back as plain text.
"""

from __future__ import annotations

try:
    from enum import StrEnum
except ImportError:  # Python 3.10: the same, as the standard library's 3.11 defines it
    from enum import Enum

    class StrEnum(str, Enum):  # type: ignore[no-redef]
        """Members that are their own string values (``str(m)`` and f-strings give the value)."""

        def __str__(self) -> str:
            return str(self.value)


class Status(StrEnum):
    """A run's ``status`` attribute."""

    RUNNING = "running"
    COMPLETED = "completed"
    OOM = "oom"  # the batch did not fit: a result of the study, not a failure
    NAN = "nan"  # the loss diverged: a result too, rerunning the same config repeats it
    FAILED = "failed"  # an error: the run has no result and is rerun
    INTERRUPTED = "interrupted"  # SIGTERM or Ctrl-C: a rerun resumes from the last checkpoint


#: statuses that are a result: a campaign skips these points and a rerun changes nothing
FINISHED = frozenset({Status.COMPLETED, Status.OOM, Status.NAN})
#: the exit code of a process (rank) whose run ended with a status; 2 is a bad input (nothing ran)
EXIT_CODES = {Status.COMPLETED: 0, Status.FAILED: 1, Status.OOM: 3, Status.NAN: 4, Status.INTERRUPTED: 143}
EXIT_BAD_INPUT = 2



class Attr(StrEnum):
    """Root attributes of ``metrics.h5``."""

    # what the run is, known before setup
    STATUS = "status"
    CONFIG_YAML = "config_yaml"
    EXPERIMENT = "experiment"
    GIT_COMMIT = "git_commit"
    VERSIONS = "versions"  # JSON
    HOSTNAME = "hostname"
    DEVICE_NAME = "device_name"
    DEVICE_CAPABILITY = "device_capability"  # JSON (devices.capability)
    WORLD_SIZE = "world_size"  # processes (DDP) or GPUs (DP) that share one step
    MODE = "mode"
    BACKEND = "backend"
    BATCH_SIZE = "batch_size"  # the global batch of one optimizer step
    LOCAL_BATCH_SIZE = "local_batch_size"  # what one device computes per step
    PRECISION = "precision"
    CHANNELS_LAST = "channels_last"
    COMPILE = "compile"
    COMPILE_MODE = "compile_mode"
    LOADER = "loader"
    ACCUMULATION_STEPS = "accumulation_steps"
    ACTIVATION_CHECKPOINTING = "activation_checkpointing"
    MODEL = "model"
    WARMUP_STEPS = "warmup_steps"
    OPTIMIZER_IMPL = "optimizer_impl"
    MEMORY_LIMIT_GB = "memory_limit_gb"
    ALLOW_TF32 = "allow_tf32"
    STARTED_AT = "started_at"
    COMMAND = "command"
    # known once the run is set up
    DEVICES = "devices"
    DATA_SOURCE = "data_source"
    STEPS_PER_EPOCH = "steps_per_epoch"
    TOTAL_STEPS = "total_steps"
    THREADS_PER_PROCESS = "threads_per_process"
    AUTO_CHOICES = "auto_choices"  # JSON (autotune decisions)
    GRAD_BYTES = "grad_bytes"
    BUCKET_CAP_MB = "bucket_cap_mb"
    LINK_NAME = "link_name"
    LINK_BANDWIDTH_GBPS = "link_bandwidth_GBps"
    LINK_LATENCY_US = "link_latency_us"
    GPU_TOTAL_MEMORY_BYTES = "gpu_total_memory_bytes"
    MEMORY_OUTSIDE_ALLOCATOR_BYTES = "memory_outside_allocator_bytes"
    ALLOCATOR_CAP_BYTES = "allocator_cap_bytes"
    ALLOCATOR_SETTINGS = "allocator_settings"
    RESUMED_FROM_STEP = "resumed_from_step"
    SYSTEM = "system"  # JSON (system.describe_system): GPUs, CPU, /dev/shm, NCCL_/CUDA_ environment
    # where it ran (dispatch)
    SLURM_JOB_ID = "slurm_job_id"
    SLURM_ARRAY_TASK_ID = "slurm_array_task_id"
    SLURM_NODELIST = "slurm_nodelist"
    #: JSON {"start": ..., "end": ...}: Slurm's view of rank 0's node as the run started and ended (system.node_sharing)
    NODE_SHARING = "node_sharing"
    SUBMITIT_JOB_ID = "submitit_job_id"
    JOB_STDOUT = "job_stdout"  # the job's log files (submitit's of rank 0's task, else Slurm's StdOut/StdErr)
    JOB_STDERR = "job_stderr"
    CONTAINER_RUNTIME = "container_runtime"  # what started the container (machine.container.started_by)
    CONTAINER_IMAGE = "container_image"
    CONTAINER_ENV_PASSED = "container_env_passed"  # the variables passed into the image (machine.clean_env)
    CONTAINER_DIGEST = "container_digest"
    IMAGE_COMMIT = "image_commit"  # what the image says of itself (container.py): the commit baked in
    IMAGE_RECIPE = "image_recipe"  # the hash of its recipe (containers/install.sh recipe-hash)
    IMAGE_BUILT = "image_built"
    PYTHON_EXECUTABLE = "python_executable"  # the interpreter that ran rank 0: the image's, in one
    # how it ended
    FINISHED_AT = "finished_at"
    ERROR = "error"
    OOM_BATCH_SIZE = "oom_batch_size"
    BOUNDARY_SEARCH = "boundary_search"  # a boundary probe: the line searched, as JSON (boundary.py)
    NAN_STEP = "nan_step"
    STOP_RANK = "stop_rank"


#: attributes that describe how a run ended: cleared when a rerun resumes it
END_ATTRIBUTES = (Attr.FINISHED_AT, Attr.ERROR, Attr.OOM_BATCH_SIZE, Attr.NAN_STEP, Attr.STOP_RANK)


class Summary(StrEnum):
    """Attributes of the ``summary`` group (the run's figures)."""

    IMAGES_PER_S = "images_per_s"  # total images / total seconds over the measured steps (measure.py)
    IMAGES_PER_S_CI = "images_per_s_ci"  # half-width of its 95 % confidence interval (0: too few steps)
    MEASURED_FROM_STEP = "measured_from_step"  # the first measured step: past the warm-up, once settled
    MEASURED_STEPS = "measured_steps"
    RANK_TIME_SPREAD = "rank_time_spread"  # slowest over fastest rank's measured time, minus 1
    PEAK_MEMORY_BYTES = "peak_memory_bytes"
    PEAK_RESERVED_BYTES = "peak_reserved_bytes"
    COMPILE_TIME_S = "compile_time_s"
    METRICS_WRITE_S = "metrics_write_s"
    METRICS_OVERHEAD = "metrics_overhead"
    FINAL_TEST_ACC = "final_test_acc"
    # what bounds the point (bounds.py): global images/s each part alone allows, and the lowest's name
    COMPUTE_IMAGES_PER_S = "compute_images_per_s"
    INPUT_IMAGES_PER_S = "input_images_per_s"
    ALLREDUCE_IMAGES_PER_S = "allreduce_images_per_s"
    BOUND = "bound"  # compute | input | communication


#: the bound label and the three figures behind it, in the order the report shows them
BOUND_FIELDS = (Summary.BOUND, Summary.COMPUTE_IMAGES_PER_S, Summary.INPUT_IMAGES_PER_S, Summary.ALLREDUCE_IMAGES_PER_S)
STEP_FIELDS = ("step", "epoch", "loss", "lr", "images_per_s", "step_time_s", "data_time_s")
EPOCH_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s")
#: datasets of the ``ranks`` group: step_time_s [rank, step], the host of each rank and the peaks per rank or GPU
RANK_FIELDS = ("step_time_s", "hostname", Summary.PEAK_MEMORY_BYTES.value, Summary.PEAK_RESERVED_BYTES.value)


def check_names(names: object, allowed: type[StrEnum], where: str) -> None:
    """KeyError naming the first of ``names`` that ``allowed`` does not define."""
    known = {m.value for m in allowed}
    for name in names:  # type: ignore[attr-defined]
        if name not in known:
            raise KeyError(f"{where}: {name!r} is not a {allowed.__name__} name (add it to pyramidrepro.config.schema)")
