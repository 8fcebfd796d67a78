"""Low-precision inference numerics, bit-exact with PyTorch/FBGEMM on CPU, and accuracy studies.

Only numpy and numba are needed at runtime; torch is a test oracle (see docs/lowprec.md).

Rowwise embeddings: :func:`quantize_rowwise`, :func:`dequantize_rowwise`,
:func:`embedding_bag_rowwise`. Casts: :func:`to_fp16`, :func:`to_bf16`, :func:`bf16_bits`.
Linear layers: :func:`linear_dynamic_int8`, :func:`linear_fp16_weight`. Model study:
:class:`DLRM`, :func:`study`.
"""

from embzip.lowprec.bag import bag_bounds, embedding_bag_rowwise
from embzip.lowprec._isa import fbgemm_columns
from embzip.lowprec.casts import bf16_bits, bf16_to_f32, to_bf16, to_fp16
from embzip.lowprec.linear import (
    activation_qparams,
    flush_to_zero,
    linear_dynamic_int8,
    linear_fp16_weight,
    quantize_weight_int8,
)
from embzip.lowprec.model import DLRM, EMB_PRECISIONS, MLP_PRECISIONS, forward, layer_bytes
from embzip.lowprec.rowwise import (
    dequantize_rowwise,
    packed_dim,
    packed_row_bytes,
    quantize_rowwise,
)
from embzip.lowprec.study import DEFAULT_CONFIGS, StudyResult, auc, normalized_entropy, study

__all__ = [
    "quantize_rowwise",
    "dequantize_rowwise",
    "embedding_bag_rowwise",
    "bag_bounds",
    "packed_row_bytes",
    "packed_dim",
    "to_fp16",
    "to_bf16",
    "bf16_bits",
    "bf16_to_f32",
    "linear_dynamic_int8",
    "linear_fp16_weight",
    "quantize_weight_int8",
    "activation_qparams",
    "flush_to_zero",
    "fbgemm_columns",
    "DLRM",
    "EMB_PRECISIONS",
    "MLP_PRECISIONS",
    "forward",
    "layer_bytes",
    "study",
    "StudyResult",
    "normalized_entropy",
    "auc",
    "DEFAULT_CONFIGS",
]
