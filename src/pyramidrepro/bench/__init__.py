"""The benchmark harness behind ``bench`` and ``bench-loader``."""
