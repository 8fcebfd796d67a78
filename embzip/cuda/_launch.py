"""Launch configuration and jit decorators of the CUDA backend: the one place for both.

Why one place: every kernel is compiled with the same numerics and launched with sizes chosen
here, so tuning a launch or moving to the simulator touches one file.

Numerics. ``fastmath`` is off, but numba-cuda still leaves libNVVM at its default ``-fma=1``,
which contracts ``a * b + c`` into one fused multiply-add (checked in the PTX: ``fma.rn.f64``).
That would change the quantizer's rounding and break byte-identity with the CPU backend, so
every multiplication the quantizer's result depends on goes through :func:`mul_f64` /
:func:`mul_f32`, which call libdevice's ``__nv_dmul_rn`` / ``__nv_fmul_rn``: PTX never fuses a
``mul.rn`` into an ``fma``. Under the simulator (``NUMBA_ENABLE_CUDASIM=1``) they are plain
numpy multiplications, which round the same way.

Sizes. Real GPUs get 256-thread blocks and a grid of a few waves over the multiprocessors;
every kernel loops grid-stride, so any grid is correct. The simulator runs one Python thread
per GPU thread, so it gets 32-thread blocks and at most 4 blocks.
"""

from __future__ import annotations

import os
import threading

import numpy as np
from numba import config, cuda

__all__ = ["SIMULATOR", "THREADS", "MAX_THREADS", "kernel", "device", "blocks", "mul_f32", "mul_f64",
           "CRC_CHUNK_WORDS"]

SIMULATOR = bool(config.ENABLE_CUDASIM)
#: Threads per block; shared-memory arrays are sized for MAX_THREADS (a compile-time constant).
MAX_THREADS = 256
#: At least one warp: the bit-packer gives each 32-thread group a block of 256 values (fewer
#: threads made its grid-stride step 0, a division by zero on a GPU).
MIN_THREADS = 32
THREADS = int(os.environ.get("EMBZIP_CUDA_THREADS", 32 if SIMULATOR else MAX_THREADS))
if not MIN_THREADS <= THREADS <= MAX_THREADS or THREADS & (THREADS - 1):
    raise ValueError(f"EMBZIP_CUDA_THREADS must be a power of two in {MIN_THREADS}..{MAX_THREADS}, found {THREADS}")
#: Words (4 bytes) of payload one thread checksums before its CRC is folded in.
CRC_CHUNK_WORDS = 512

_WAVES = 8  # blocks per multiprocessor: enough in flight to hide memory latency
_max_blocks = None


_CONFIG_LOCK = threading.Lock()


class _QuietKernel:
    """A compiled kernel whose launches skip numba-cuda's low-occupancy warning.

    numba-cuda warns about every grid under 128 blocks, once per distinct size: a compress
    launches dozens of deliberately small grids (a 1-block scan of tile totals, a 1-thread
    header patch), which printed a screenful of NumbaPerformanceWarning on a user's first
    call. The switch is numba's global config, so it is set only while the launch
    configuration is built (numba reads it there) and restored at once; other attributes
    pass through to numba's dispatcher.
    """

    __slots__ = ("dispatcher",)

    def __init__(self, dispatcher):
        self.dispatcher = dispatcher

    def __getitem__(self, launch):
        with _CONFIG_LOCK:  # two threads (embzip.comm's pipeline) would restore each other's value
            saved = config.CUDA_LOW_OCCUPANCY_WARNINGS
            config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
            try:
                return self.dispatcher[launch]
            finally:
                config.CUDA_LOW_OCCUPANCY_WARNINGS = saved

    def __getattr__(self, name):
        return getattr(self.dispatcher, name)


def kernel(fn):
    """A ``cuda.jit`` kernel with embzip's numerics (see the module docstring), launched
    without numba-cuda's low-occupancy warnings (see :class:`_QuietKernel`)."""
    return _QuietKernel(cuda.jit(fastmath=False)(fn))


def device(fn):
    """A ``cuda.jit`` device function with embzip's numerics."""
    return cuda.jit(device=True, fastmath=False)(fn)


def max_blocks() -> int:
    """Blocks in a full grid: a few waves over the multiprocessors (4 in the simulator)."""
    global _max_blocks
    if _max_blocks is None:
        if SIMULATOR:
            _max_blocks = 4
        else:
            sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
            _max_blocks = int(sms) * _WAVES
    return _max_blocks


def blocks(items: int, per_block: int = 0) -> int:
    """Grid size for ``items`` work items, ``per_block`` of them per block (default THREADS)."""
    per_block = per_block or THREADS
    return max(1, min(-(-int(items) // per_block), max_blocks()))


if SIMULATOR:
    @device
    def mul_f64(a, b):
        return a * b

    @device
    def mul_f32(a, b):
        return np.float32(a) * np.float32(b)
else:  # pragma: no cover - needs a GPU
    from numba.cuda import libdevice

    @device
    def mul_f64(a, b):
        return libdevice.dmul_rn(a, b)

    @device
    def mul_f32(a, b):
        return libdevice.fmul_rn(a, b)
