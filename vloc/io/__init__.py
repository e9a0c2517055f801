"""Readers and writers: images, COLMAP models and camera lines, pose lists, trajectories, kapture."""
