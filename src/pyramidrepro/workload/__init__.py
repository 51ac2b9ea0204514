"""What is trained and on what: PyramidNet, CIFAR-10 (or synthetic) images, and the loaders
that turn one global permutation per (seed, epoch) into each rank's batches."""
