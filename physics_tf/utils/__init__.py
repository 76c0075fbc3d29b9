"""Small shared utilities of physics_tf (atomic file writes, ...)."""

from physics_tf.utils.io import atomic_path

__all__ = ["atomic_path"]
