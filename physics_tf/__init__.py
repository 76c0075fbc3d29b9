"""physics_tf: transformers for physics data, trained from the Hydra command line."""

__version__ = "0.1.0"
