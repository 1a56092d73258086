"""Training: target assignment, sampling and the official loss terms of each head."""
