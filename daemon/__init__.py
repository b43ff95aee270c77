"""Stratum's kernel: from a commit to a recorded run."""

__version__ = "0.1.0"
