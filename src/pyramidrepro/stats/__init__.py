"""Numbers from measurements: throughput with its confidence interval (measure) and the DDP
all-reduce model that predicts scaling (scaling). Plain Python, no torch."""
