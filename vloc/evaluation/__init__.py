"""Pose error metrics."""
