"""One run from start to outcome: the trainer (context, setup, record), the loop that only
iterates, checkpoints that resume a preempted run, and the injected faults the tests use."""
