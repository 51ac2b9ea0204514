"""What a run leaves: its folder (runs) and lock (lock), its HDF5 file (metrics), the recorder the
training loop writes through, and atomic writes that keep a full disk from half a file."""
