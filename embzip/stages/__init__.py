"""Codec stages: validating, allocating Python wrappers around the kernels in ``embzip.cpu``."""
