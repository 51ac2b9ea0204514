"""What an experiment is: its config (sections, checks, sweeps, run ids), the status and HDF5
name vocabulary, and the PyramidNet variants a config may name. No torch."""
