"""Speed and size of the rANS entropy coder (embzip.stages.rans) on skewed symbol streams.

Run: ``python bench/rans_speed.py [symbol_count]`` (default 16M).  Prints symbols/s for
encode, decode and estimate_size (best of several runs, after JIT warm-up) and the coded
bits/symbol next to the order-0 entropy and the Huffman bound of the same stream.
"""

from __future__ import annotations

import heapq
import sys
import time

import numpy as np

from embzip.stages import rans


def zigzag(codes: np.ndarray) -> np.ndarray:
    """Signed quantization codes -> uint32 symbols, as the codec does."""
    codes = codes.astype(np.int64)
    return ((codes << 1) ^ (codes >> 63)).astype(np.uint32)


def laplace_symbols(count: int, scale: float, seed: int = 0) -> np.ndarray:
    """Zigzagged rounded Laplace codes: the shape prequantized embedding values take."""
    rng = np.random.default_rng(seed)
    return zigzag(np.rint(rng.laplace(0.0, scale, count)))


def entropy_bits(symbols: np.ndarray) -> float:
    """Order-0 entropy in bits/symbol."""
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def huffman_bits(symbols: np.ndarray) -> float:
    """Average Huffman code length in bits/symbol (optimal prefix code, >= 1 bit)."""
    _, counts = np.unique(symbols, return_counts=True)
    if counts.size == 1:
        return 1.0
    heap = [int(c) for c in counts]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged  # each merge adds one bit to every symbol below it
        heapq.heappush(heap, merged)
    return total / counts.sum()


def best_time(fn, repeats: int = 5) -> float:
    fn()  # JIT warm-up and page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 24
    cases = {
        "laplace scale 0.3 (loose bound)": laplace_symbols(count, 0.3),
        "laplace scale 2": laplace_symbols(count, 2.0),
        "laplace scale 6": laplace_symbols(count, 6.0),
        "laplace scale 100 (escapes)": laplace_symbols(count, 100.0),
    }
    header = (
        f"{'stream':34} {'H0':>6} {'Huff':>6} {'rANS':>6} {'vs H0':>7} {'est err':>8}"
        f" {'enc Msym/s':>11} {'dec Msym/s':>11} {'est Msym/s':>11}"
    )
    print(f"{count} symbols, chunk size {rans.DEFAULT_CHUNK_SIZE}")
    print(header)
    print("-" * len(header))
    for name, symbols in cases.items():
        section = rans.encode(symbols)
        out = np.empty_like(symbols)
        assert np.array_equal(rans.decode(section, count, out), symbols)
        t_enc = best_time(lambda: rans.encode(symbols))
        t_dec = best_time(lambda: rans.decode(section, count, out))
        t_est = best_time(lambda: rans.estimate_size(symbols))
        h0 = entropy_bits(symbols)
        huff = huffman_bits(symbols)
        coded = 8 * section.size / count
        est_err = rans.estimate_size(symbols) / section.size - 1
        print(
            f"{name:34} {h0:6.3f} {huff:6.3f} {coded:6.3f} {coded / h0 - 1:+7.2%} {est_err:+8.2%}"
            f" {count / t_enc / 1e6:11.1f} {count / t_dec / 1e6:11.1f} {count / t_est / 1e6:11.1f}"
        )


if __name__ == "__main__":
    main()
