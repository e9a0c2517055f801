"""Self-contained demo: a synthetic textured scene with exact ground truth, and its end-to-end run."""
