"""numcodecs codec: embzip's error-bounded compression inside zarr and anything numcodecs.

Registered under the id ``"embzip"`` through the ``numcodecs.codecs`` entry point (and on
import of this module), so ``numcodecs.get_codec({"id": "embzip", "abs_error": 1e-3})``
works once embzip is installed. This module imports numcodecs; ``import embzip`` does not.

The codec compresses what a numcodecs codec receives: a C-contiguous float array keeps its
shape (so rows of a 2-D chunk are deduplicated); anything else is taken in memory order as a
flat buffer, the way every numcodecs codec treats bytes: an F-ordered chunk, or raw bytes
(``bytes``, ``bytearray``, integer arrays) when ``dtype`` says which floats they hold. A view
with gaps between its elements has no memory order: numcodecs' ``ValueError``, as for every
numcodecs codec (``np.ascontiguousarray`` it first). Values must be in native byte order:
decoded values come back in it, and a caller reading them in another order would read garbage.
Decoding returns the array (or fills ``out``, an array or a writable buffer of the right size).

Examples
--------
>>> import numpy as np
>>> from embzip.codec import Embzip
>>> codec = Embzip(abs_error=1e-3)
>>> x = np.linspace(0, 1, 1000, dtype=np.float32)
>>> y = codec.decode(codec.encode(x))
>>> bool(np.abs(y - x).max() <= 1e-3), y.dtype
(True, dtype('float32'))
>>> Embzip.from_config(codec.get_config()) == codec
True
"""

from __future__ import annotations

import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ensure_contiguous_ndarray, ensure_ndarray, ndarray_copy
from numcodecs.registry import register_codec

from . import _api
from .errors import OutMismatchError

__all__ = ["Embzip"]


class Embzip(Codec):
    """Error-bounded lossy compression of float32/float64 chunks (id ``"embzip"``).

    Parameters
    ----------
    abs_error : float, optional
        Every finite value decodes within ``abs_error``.
    rel_error : float, optional
        The bound is ``rel_error * (max - min)`` of each chunk's finite values (so it is
        per chunk, not per array). Give exactly one of ``abs_error`` and ``rel_error``.
    strategy : {"auto", "fast", "compact"}
        As in :func:`embzip.compress`.
    dtype : str, optional
        How to read byte buffers and non-float arrays handed to :meth:`encode` (e.g.
        ``"<f4"``; native byte order). Float arrays are always compressed as their own dtype.

    Examples
    --------
    >>> import numcodecs
    >>> numcodecs.get_codec({"id": "embzip", "rel_error": 0.01})
    Embzip(abs_error=None, rel_error=0.01, strategy='auto', dtype=None)
    """

    codec_id = "embzip"

    def __init__(self, abs_error=None, rel_error=None, strategy="auto", dtype=None):
        # Validate now, not at the first chunk: a bad codec must not reach a zarr store.
        probe = np.zeros(1, np.float32)
        _api.compress(probe, abs_error=abs_error, rel_error=rel_error, strategy=strategy)
        self.abs_error = None if abs_error is None else float(abs_error)
        self.rel_error = None if rel_error is None else float(rel_error)
        self.strategy = strategy
        self.dtype = _float_dtype(dtype, native=True)

    @classmethod
    def from_config(cls, config):
        """The codec from :meth:`get_config`'s dict (its ``"id"`` key is allowed).

        A stored config may name a non-native ``dtype`` (earlier versions took one): it opens,
        so the store's chunks decode (decoding never reads ``dtype``), and only encoding a
        byte buffer with it is refused, as :meth:`encode` says.
        """
        config = dict(config)
        codec_id = config.pop("id", cls.codec_id)
        if codec_id != cls.codec_id:
            raise ValueError(f"config is for codec {codec_id!r}, not {cls.codec_id!r}")
        dtype = config.pop("dtype", None)
        codec = cls(**config)
        codec.dtype = _float_dtype(dtype, native=False)
        return codec

    def __repr__(self):  # parameters in signature order, evaluable
        return (f"Embzip(abs_error={self.abs_error!r}, rel_error={self.rel_error!r}, "
                f"strategy={self.strategy!r}, dtype={self.dtype!r})")

    def encode(self, buf):
        """Compress ``buf``; returns the frame as bytes."""
        arr = ensure_ndarray(buf)
        if arr.dtype.kind != "f":
            if self.dtype is None:
                raise TypeError(f"embzip compresses float arrays, found dtype {arr.dtype}; "
                                f"give Embzip(dtype=...) to read byte buffers as floats")
            arr = ensure_contiguous_ndarray(arr).view(self.dtype)  # raises if not a multiple
        elif not arr.flags.c_contiguous:
            # memory order, flat: what decode's reshape by the caller (zarr, numcodecs) expects
            arr = ensure_contiguous_ndarray(arr)
        if not arr.dtype.isnative:
            # Frames hold values, decoded in native order; a codec's caller (zarr) reads the
            # decoded bytes in the array's order, and would read swapped bytes: garbage.
            raise TypeError(f"the Embzip codec needs native byte order, found dtype {arr.dtype}: store the "
                            f"array as {arr.dtype.newbyteorder('=')} (or call embzip.compress, which takes either)")
        frame = _api.compress(arr, abs_error=self.abs_error, rel_error=self.rel_error,
                              strategy=self.strategy)
        return frame.tobytes()

    def decode(self, buf, out=None):
        """Decode a frame; into ``out`` when given (an array, or a buffer of the same size).

        As numcodecs codecs do, ``out`` is filled in its memory order: the decoded values'
        C-order bytes land in ``out``'s memory as they are, so an F-ordered ``out`` of the
        frame's shape holds them transposed. ``embzip.decompress(frame, out=...)`` fills by
        index instead. A frame that decodes to more (or fewer) bytes than ``out`` holds is
        refused (``OutMismatchError``: an ``EmbzipError`` and a ``ValueError``) before anything
        is decoded or allocated; without ``out`` nothing caps the size a frame declares
        (``embzip.decompress(frame, max_bytes=...)`` does).
        """
        frame = ensure_contiguous_ndarray(buf).view(np.uint8)
        if out is None:
            return _api.decompress(frame)
        info = _api.inspect(frame)
        if isinstance(out, np.ndarray) and out.flags.c_contiguous and out.flags.writeable:
            if out.shape == info.shape and out.dtype == info.dtype:
                return _api.decompress(frame, out=out)  # straight in, no copy
        out_arr = ensure_ndarray(out)
        if out_arr.nbytes != info.raw_size:  # before decoding: a frame declaring more than
            # out holds (a corrupt or hostile chunk) must not allocate what it declares
            raise OutMismatchError(f"out holds {out_arr.nbytes} bytes, the frame decodes to "
                             f"{info.raw_size}")
        decoded = _api.decompress(frame, max_bytes=out_arr.nbytes)
        if out_arr.dtype != decoded.dtype and out_arr.dtype == decoded.dtype.newbyteorder():
            # a float out of the other byte order: its bytes must hold the values in that order
            # (ndarray_copy copies bytes, and would leave native-order bytes there)
            decoded = decoded.astype(out_arr.dtype)
        return ndarray_copy(decoded, out)


def _float_dtype(dtype, native: bool):
    """``dtype`` as the config holds it (e.g. "<f4"), or None; refused unless a float32/64
    (and, with ``native``, in native byte order: encode would refuse every byte buffer)."""
    if dtype is None:
        return None
    dtype = np.dtype(dtype)
    if dtype.kind != "f" or dtype.itemsize not in (4, 8):
        raise TypeError(f"dtype must be float32 or float64, found {dtype}")
    if native and not dtype.isnative:
        raise TypeError(f"dtype must be in native byte order, found {dtype.str}: the codec "
                        f"decodes to native order ({dtype.newbyteorder('=').str})")
    return dtype.str  # JSON-friendly in the config


register_codec(Embzip)
