"""CUDA backend: numba.cuda kernels mirroring embzip/cpu/ file for file (see docs/cuda.md).

Nothing is imported here: ``import embzip`` must work without numba-cuda or a GPU, and
embzip._backend imports :mod:`embzip.cuda.pipeline` only when a device array shows up.
"""
