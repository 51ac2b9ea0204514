"""pyramidrepro: reproduce and extend the PyramidNet single / DataParallel / DDP throughput study."""

__version__ = "0.1.0"
