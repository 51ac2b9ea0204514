"""What the paper (Han et al. 2017, and the study's Figure 5) reports, for the report to compare with."""

#: CIFAR-10 top-1 error %, by (depth, alpha)
PAPER_ERROR = {(110, 48.0): 4.62, (110, 270.0): 3.73}
#: the smallest batch that ran out of memory on the paper's single GPU
PAPER_OOM_BATCH = 512
#: the memory of the paper's GPU
PAPER_GPU_MEMORY_GB = 12
#: the batch sizes the paper's Figure 5 shows
PAPER_BATCHES = (64, 128, 256, 512)
