"""When compression pays, and which encoder to use (the seed paper's model).

Sending ``raw`` bytes over a link of bandwidth ``B`` takes ``raw / B``. Compressing first
takes ``raw / Tc + size / B + raw / Td`` where ``Tc`` and ``Td`` are the encoder's compress
and decompress throughputs. Dividing by ``raw / B``: compression pays when
``1 / CR + B * (1 / Tc + 1 / Td) < 1``.

Throughputs are nominal numbers measured on a 2-core CPU (bench/compare.py); the comm layer
replaces them with its own measurements.
"""

from __future__ import annotations

import dataclasses

__all__ = ["EncoderCost", "NOMINAL", "pays", "choose", "SIZE_PREFERENCE"]

#: Without a link bandwidth (plain ``compress``), ``auto`` takes the slower, smaller encoder
#: only when it saves at least this fraction of the faster one's bytes.
SIZE_PREFERENCE = 0.05


@dataclasses.dataclass(frozen=True)
class EncoderCost:
    """Throughputs of one encoder in bytes of raw input per second."""

    compress_bps: float
    decompress_bps: float


NOMINAL = {
    "bitpack": EncoderCost(2.0e9, 3.0e9),
    "rans": EncoderCost(0.5e9, 0.5e9),
}


def pays(ratio: float, bandwidth: float, cost: EncoderCost) -> bool:
    """True when ``1/ratio + bandwidth * (1/Tc + 1/Td) < 1``.

    Examples
    --------
    >>> pays(10.0, 125e6, EncoderCost(2e9, 3e9))   # 1 Gbit/s link, ratio 10
    True
    >>> pays(1.5, 50e9, EncoderCost(2e9, 3e9))     # faster link than the codec
    False
    """
    if ratio <= 0:
        return False
    return 1.0 / ratio + bandwidth * (1.0 / cost.compress_bps + 1.0 / cost.decompress_bps) < 1.0


def choose(raw_bytes: int, sizes: dict, bandwidth: float | None = None, costs: dict | None = None) -> str:
    """Pick the encoder name from ``sizes`` (name -> encoded bytes) for ``raw_bytes`` of input.

    With a ``bandwidth`` (bytes/s) the encoder with the least end-to-end time wins. Without,
    the smallest output wins, unless it saves less than :data:`SIZE_PREFERENCE` of the
    fastest encoder's output. Names in ``sizes`` must be keys of ``costs`` (default
    :data:`NOMINAL`), and ties go to the faster encoder.
    """
    costs = costs or NOMINAL
    by_speed = sorted(sizes, key=lambda name: -costs[name].compress_bps)
    if bandwidth is None:
        fastest = by_speed[0]
        best = min(by_speed, key=lambda name: sizes[name])
        if sizes[best] <= (1.0 - SIZE_PREFERENCE) * sizes[fastest]:
            return best
        return fastest

    def seconds(name: str) -> float:
        cost = costs[name]
        return raw_bytes / cost.compress_bps + sizes[name] / bandwidth + raw_bytes / cost.decompress_bps

    return min(by_speed, key=seconds)
