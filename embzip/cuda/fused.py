"""Fused quantize + bit-pack for the fast path (CUDA twin of cpu/fused.py).

Two passes over the float input and no code array: the plan pass quantizes to find every
block's width and outlier count; after a prefix sum gives each block its word offset and
outlier offset, the pack pass quantizes again (into shared memory) and writes the packed
words and the outliers straight into the frame. Quantizing twice costs less than writing
and re-reading a code array, and both passes call ``quantize_one``, the function the
materializing path uses, so the frames are identical.
"""

from __future__ import annotations

from ._launch import device
from .bitpack import make_pack, make_pack_tail, make_plan
from .quantize import quantize_one_f32, quantize_one_f64

__all__ = ["plan_f32", "plan_f64", "pack_f32", "pack_f64", "pack_tail_f32", "pack_tail_f64"]


@device
def _load_f32(values, i, inv_step, step, abs_error):
    return quantize_one_f32(values[i], inv_step, step, abs_error)


@device
def _load_f64(values, i, inv_step, step, abs_error):
    return quantize_one_f64(values[i], inv_step, step, abs_error)


plan_f32 = make_plan(_load_f32)
plan_f64 = make_plan(_load_f64)
pack_f32 = make_pack(_load_f32, 4)
pack_f64 = make_pack(_load_f64, 8)
pack_tail_f32 = make_pack_tail(_load_f32, 4)
pack_tail_f64 = make_pack_tail(_load_f64, 8)
