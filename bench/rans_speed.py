"""Speed and size of the rANS entropy coder (embzip.stages.rans) on skewed symbol streams.

Run: ``python bench/rans_speed.py [symbol_count]`` (default 2**24).  Prints symbols/s for
encode, decode and estimate_size (best of several runs, after JIT warm-up) and the coded
bits/symbol next to the order-0 entropy and the Huffman average length of the same stream.
"""

from __future__ import annotations

import heapq
import sys
import time

import numba
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


def best_time(fn, repeats: int = 7) -> tuple[float, float]:
    """Best wall-clock and best process CPU time (all threads) of ``fn``, after a warm-up.

    CPU time divided among the cores is what an otherwise idle machine would take; on a
    shared machine the wall clock also counts time other jobs held our cores.
    """
    fn()  # JIT warm-up and page faults
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1 << 24
    cases = {
        "laplace scale 0.15 (96% zeros)": laplace_symbols(count, 0.15),
        "laplace scale 0.3 (81% zeros)": laplace_symbols(count, 0.3),
        "laplace scale 2": laplace_symbols(count, 2.0),
        "laplace scale 6": laplace_symbols(count, 6.0),
        "laplace scale 100 (escapes)": laplace_symbols(count, 100.0),
    }
    print(
        f"{count} symbols, chunk size {rans.DEFAULT_CHUNK_SIZE}, {numba.get_num_threads()} threads;"
        " bits/symbol: H0 order-0 entropy, Huff Huffman average, rANS coded (table included)"
    )
    header = (
        f"{'stream':31} {'H0':>6} {'Huff':>6} {'rANS':>6} {'vs H0':>7} {'est err':>8}"
        f" {'encode':>7} {'decode':>7} {'estim.':>7} {'enc/core':>9} {'dec/core':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, symbols in cases.items():
        section = rans.encode(symbols)
        out = np.empty_like(symbols)
        assert np.array_equal(rans.decode(section, count, out), symbols)
        enc_wall, enc_cpu = best_time(lambda: rans.encode(symbols))
        dec_wall, dec_cpu = best_time(lambda: rans.decode(section, count, out))
        est_wall, _ = best_time(lambda: rans.estimate_size(symbols))
        h0 = entropy_bits(symbols)
        coded = 8 * section.size / count
        est_err = rans.estimate_size(symbols) / section.size - 1
        rate = lambda seconds: f"{count / seconds / 1e6:7.0f}"  # noqa: E731
        print(
            f"{name:31} {h0:6.3f} {huffman_bits(symbols):6.3f} {coded:6.3f} {coded / h0 - 1:+7.2%}"
            f" {est_err:+8.2%} {rate(enc_wall)} {rate(dec_wall)} {rate(est_wall)}"
            f" {rate(enc_cpu):>9} {rate(dec_cpu):>9}"
        )
    print(
        "Msym/s: encode/decode/estim. = wall clock on all threads (decode into a preallocated"
        " array); enc/core, dec/core = per core from process CPU time (idle-machine rate / cores)"
    )


if __name__ == "__main__":
    main()
