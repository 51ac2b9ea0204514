"""What the runs say: the report (figure 5, the paper's claims, scaling) and the comparison of campaigns."""
