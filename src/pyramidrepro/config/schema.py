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


#: what a name holds, which the reader reads it as (records.runs.recorded_values)
TEXT, INT, FLOAT, FLAG, JSON_OBJECT, JSON_LIST = "text", "int", "float", "flag", "json object", "json list"
KINDS = (TEXT, INT, FLOAT, FLAG, JSON_OBJECT, JSON_LIST)


class Documented(StrEnum):
    """Names declared as ``NAME = "name", "what it holds"[, KIND]``: the member is the name (a ``str``),
    ``doc`` its line in the documented layout (:func:`layout_table`) and ``kind`` what it holds
    (one of :data:`KINDS`, text when not given), which the reader's record reads it as."""

    doc: str
    kind: str

    def __new__(cls, value: str, doc: str = "", kind: str = TEXT) -> Documented:  # noqa: PYI034 - Enum's own
        member = str.__new__(cls, value)
        member._value_ = value
        member.doc, member.kind = doc, kind
        return member


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



class Attr(Documented):
    """Root attributes of ``metrics.h5``."""

    # what the run is, known before setup
    STATUS = "status", "running | completed | oom | nan | failed | interrupted (`Status`)"
    CONFIG_YAML = "config_yaml", "the run's resolved experiment config, as YAML"
    EXPERIMENT = "experiment", "the experiment's name"
    GIT_COMMIT = "git_commit", "the package's commit (`-dirty` with uncommitted changes)"
    VERSIONS = "versions", "Python, torch, CUDA, cuDNN, NCCL, DALI, submitit versions", JSON_OBJECT
    HOSTNAME = "hostname", "rank 0's host"
    DEVICE_NAME = "device_name", "the device rank 0 computed on"
    DEVICE_CAPABILITY = "device_capability", "what the device does fast (`machine.devices.capability`)", JSON_OBJECT
    WORLD_SIZE = "world_size", "processes (DDP) or GPUs (DP) that share one step", INT
    MODE = "mode", "single | dp | dp_balanced | ddp"
    BACKEND = "backend", "the process group's backend (DDP)"
    BATCH_SIZE = "batch_size", "the global batch of one optimizer step", INT
    LOCAL_BATCH_SIZE = "local_batch_size", "what one device computes per step", INT
    PRECISION = "precision", "fp32 | bf16 | fp16"
    CHANNELS_LAST = "channels_last", "whether activations were channels_last", FLAG
    COMPILE = "compile", "whether the step was compiled", FLAG
    COMPILE_MODE = "compile_mode", "torch.compile's mode ('' when not compiled)"
    LOADER = "loader", "what fed the step: torch | torchvision | dali"
    ACCUMULATION_STEPS = "accumulation_steps", "micro-batches per optimizer step (gradient accumulation)", INT
    ACTIVATION_CHECKPOINTING = "activation_checkpointing", "activations recomputed in the backward pass", FLAG
    MODEL = "model", "the PyramidNet variant, e.g. `pyramidnet110_a270_basic`"
    WARMUP_STEPS = "warmup_steps", "steps left out of the measurement", INT
    OPTIMIZER_IMPL = "optimizer_impl", "the SGD implementation: foreach | fused | plain"
    MEMORY_LIMIT_GB = "memory_limit_gb", "the emulated card's memory, or the process's cap (CPU: `RLIMIT_DATA`)", FLOAT
    ALLOW_TF32 = "allow_tf32", "GPU: TF32 matmuls and convolutions on or off", FLAG
    STARTED_AT = "started_at", "UTC time the run started"
    COMMAND = "command", "the command line that started rank 0"
    # known once the run is set up
    DEVICES = "devices", "the devices of the step (DP: all its GPUs, master first)", JSON_LIST
    DATA_SOURCE = "data_source", "cifar10 | synthetic"
    STEPS_PER_EPOCH = "steps_per_epoch", "optimizer steps in one epoch", INT
    TOTAL_STEPS = "total_steps", "optimizer steps the run was set to take", INT
    THREADS_PER_PROCESS = "threads_per_process", "CPU: torch's threads per process", INT
    AUTO_CHOICES = "auto_choices", "how each `auto` value was chosen (the autotuner's decisions)", JSON_LIST
    GRAD_BYTES = "grad_bytes", "bytes of gradient one step all-reduces", INT
    BUCKET_CAP_MB = "bucket_cap_mb", "DDP's gradient bucket size", FLOAT
    LINK_NAME = "link_name", "multi-rank DDP: the link measured on the run's own process group"
    LINK_BANDWIDTH_GBPS = "link_bandwidth_GBps", "its bandwidth, GB/s", FLOAT
    LINK_LATENCY_US = "link_latency_us", "its latency, microseconds", FLOAT
    GPU_TOTAL_MEMORY_BYTES = "gpu_total_memory_bytes", "the GPU's own total memory", INT
    MEMORY_OUTSIDE_ALLOCATOR_BYTES = "memory_outside_allocator_bytes", "GPU memory outside PyTorch's allocator", INT
    ALLOCATOR_CAP_BYTES = "allocator_cap_bytes", "an emulated card: its total minus what is outside the allocator", INT
    ALLOCATOR_SETTINGS = "allocator_settings", "GPU: PyTorch's allocator options in force"
    RESUMED_FROM_STEP = "resumed_from_step", "after a requeue: the checkpoint's step the run resumed from", INT
    SYSTEM = "system", ("from inside the job: CPU, cores and affinity, /dev/shm, GPUs, driver, "
                        "topology, the NCCL_/CUDA_/OMP_/MKL_ environment"), JSON_OBJECT
    # where it ran (dispatch)
    SLURM_JOB_ID = "slurm_job_id", "the Slurm job"
    SLURM_ARRAY_TASK_ID = "slurm_array_task_id", "its array task"
    SLURM_NODELIST = "slurm_nodelist", "its nodes"
    SLURM_PARTITION = "slurm_partition", "the partition it ran in (points from two partitions ran on two kinds of node)"
    NODE_SHARING = "node_sharing", "Slurm's view of rank 0's node at start and end: other jobs' CPUs/GPUs", JSON_OBJECT
    SUBMITIT_JOB_ID = "submitit_job_id", "submitit's job id"
    JOB_STDOUT = "job_stdout", "the job's stdout log (submitit's of rank 0's task, else Slurm's)"
    JOB_STDERR = "job_stderr", "the job's stderr log"
    CONTAINER_RUNTIME = "container_runtime", ("what started the container: pyramidrepro | apptainer | singularity | "
                                              "charliecloud | unknown (empty on the host)")
    CONTAINER_IMAGE = "container_image", "the image's path, as the package or the runtime names it"
    CONTAINER_ENV_PASSED = "container_env_passed", "the variables passed into the image (`machine.clean_env`)"
    CONTAINER_DIGEST = "container_digest", "the SIF's sha256 (its `x.sif.sha256` when built so) or a folder image's"
    IMAGE_COMMIT = "image_commit", "the commit baked into the image"
    IMAGE_RECIPE = "image_recipe", "the hash of the image's recipe"
    IMAGE_BUILT = "image_built", "when the image was built"
    PYTHON_EXECUTABLE = "python_executable", "the interpreter that ran rank 0 (the image's, in one)"
    # how it ended
    FINISHED_AT = "finished_at", "UTC time the run ended"
    ERROR = "error", "why it ended, when not completed"
    OOM_BATCH_SIZE = "oom_batch_size", "the batch that did not fit (oom)", INT
    BOUNDARY_SEARCH = "boundary_search", "a `boundary` probe: the line searched, JSON"
    NAN_STEP = "nan_step", "the step whose loss was not finite (nan)", INT
    STOP_RANK = "stop_rank", "the DDP rank that ended the run", INT


#: attributes that describe how a run ended: cleared when a rerun resumes it
END_ATTRIBUTES = (Attr.FINISHED_AT, Attr.ERROR, Attr.OOM_BATCH_SIZE, Attr.NAN_STEP, Attr.STOP_RANK)


class Summary(Documented):
    """Attributes of the ``summary`` group (the run's figures); the last four say what bounds the point
    (:mod:`..step.bottleneck`)."""

    IMAGES_PER_S = "images_per_s", "total images / total seconds over the measured steps (`stats.measure`)", FLOAT
    IMAGES_PER_S_CI = "images_per_s_ci", "half-width of its 95 % interval, 5 contiguous windows (0: too few)", FLOAT
    MEASURED_FROM_STEP = "measured_from_step", "the first measured step: past the warm-up, once settled", INT
    MEASURED_STEPS = "measured_steps", "steps behind images_per_s", INT
    RANK_TIME_SPREAD = "rank_time_spread", "slowest over fastest rank's measured time, minus 1: a straggler", FLOAT
    PEAK_MEMORY_BYTES = "peak_memory_bytes", "largest peak allocated over GPUs (CPU: RSS), after warm-up", INT
    PEAK_RESERVED_BYTES = "peak_reserved_bytes", "largest peak reserved over GPUs, after warm-up", INT
    COMPILE_TIME_S = "compile_time_s", "seconds the first compiled step took", FLOAT
    METRICS_WRITE_S = "metrics_write_s", "seconds inside the HDF5 writer during the loop", FLOAT
    METRICS_OVERHEAD = "metrics_overhead", "metrics_write_s over the loop's step time", FLOAT
    FINAL_TEST_ACC = "final_test_acc", "test accuracy after the last epoch", FLOAT
    # what bounds the point (bounds.py): global images/s each part alone allows, and the lowest's name
    COMPUTE_IMAGES_PER_S = "compute_images_per_s", "global images/s the model step alone allows", FLOAT
    INPUT_IMAGES_PER_S = "input_images_per_s", "global images/s the loader alone allows", FLOAT
    ALLREDUCE_IMAGES_PER_S = "allreduce_images_per_s", "global images/s the all-reduce alone allows", FLOAT
    BOUND = "bound", "compute | input | communication: the lowest of the three"


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


#: the lines around the layout table in docs/architecture.md, which :func:`write_layout` fills
LAYOUT_BEGIN = "<!-- the metrics.h5 layout: generated from config/schema.py (python -m pyramidrepro.config.schema) -->"
LAYOUT_END = "<!-- end of the generated layout -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _fields(names: tuple[str, ...]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def layout_table() -> str:
    """The documented layout of ``metrics.h5``, as a markdown table rendered from the names above."""
    rows = ["| where | name | holds | what |", "| --- | --- | --- | --- |"]
    rows += [f"| root attribute | `{a}` | {a.kind} | {_cell(a.doc)} |" for a in Attr]
    rows += [f"| group `summary` (attributes) | `{s}` | {s.kind} | {_cell(s.doc)} |" for s in Summary]
    rows += [f"| group `steps` | {_fields(STEP_FIELDS)} | 1-D datasets | equal length, a row per logged step |",
             f"| group `epochs` | {_fields(EPOCH_FIELDS)} | 1-D datasets | a row per epoch (NaN: not measured) |",
             f"| group `ranks` | {_fields(RANK_FIELDS)} | datasets | step time [rank, step], each rank's host, the "
             "peaks per rank (per GPU for DP, master first) |"]
    return "\n".join(rows)


def write_layout(path: str) -> bool:
    """Replace the generated table in ``path`` (between its two marker lines); whether it changed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if LAYOUT_BEGIN not in text or LAYOUT_END not in text:
        raise ValueError(f"{path}: no {LAYOUT_BEGIN!r} ... {LAYOUT_END!r} block to fill")
    head, rest = text.split(LAYOUT_BEGIN, 1)
    tail = rest.split(LAYOUT_END, 1)[1]
    new = f"{head}{LAYOUT_BEGIN}\n{layout_table()}\n{LAYOUT_END}{tail}"
    if new == text:
        return False
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    return True


if __name__ == "__main__":  # python -m pyramidrepro.config.schema [FILE]: refresh the documented layout
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "docs/architecture.md"
    try:
        print(f"{target}: {'updated' if write_layout(target) else 'already current'}")
    except (OSError, ValueError) as exc:  # no such file, or no block to fill: one line, nothing written
        print(f"python -m pyramidrepro.config.schema: error: {exc}", file=sys.stderr)
        sys.exit(2)
