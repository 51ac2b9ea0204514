"""What a run leaves: its folder (runs) and lock (lock), its HDF5 file (metrics), the recorder the
training loop writes through, and atomic writes that keep a full disk from half a file."""

from .._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "runs": ("RunRecord", "prepare", "run_dir_for", "status_of", "is_done", "load_run", "load_runs"),
    "lock": ("RunFolderError", "RunLock"),
    "metrics": ("MetricsWriter", "read_metrics"),
    "recorder": ("RunRecorder",),
    "storage": ("ensure_space", "write_atomically"),
})
