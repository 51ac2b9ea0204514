"""What an experiment is: its config (sections, checks, sweeps, run ids), the status and HDF5
name vocabulary, and the PyramidNet variants a config may name. No torch."""

from .._exports import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "config": ("load_config",),
    "errors": ("ConfigError",),
    "experiment": ("ExperimentConfig",),
    "sweep": ("expand_sweep", "point_run_id"),
    "schema": ("Status", "Attr", "Summary", "FINISHED", "EXIT_CODES", "EXIT_BAD_INPUT"),
    "model_shape": ("check_size", "block_widths", "blocks_per_stage"),
})
