"""Find segments that share memory where MPI forbids it (MPI itself does not check).

Why: MPI leaves two receive segments that overlap, and a send buffer that shares memory with
the receive buffer, undefined, and does not check either. Plain MPI then delivers whatever the
arrival order makes of it. embzip's streamed and pipelined calls decode into the receive
buffer while they still compress from the send buffer, so the same mistake would break the
error bound without a word (measured: 6.8 off with ``abs_error=0.01``). Both raise
ValueError instead, before anything is sent, and the handshake makes every rank raise.

The one buffer of an in-place call (``MPI.IN_PLACE`` as the send buffer) is the legitimate way
to send from and receive into the same memory.
"""

from __future__ import annotations

import numpy as np

from .. import _backend

__all__ = ["check_receive_disjoint", "check_not_aliased", "first_clash"]


def first_clash(a_starts, a_ends, b_starts, b_ends):
    """Indices ``(i, j)`` of an interval ``[a_starts[i], a_ends[i])`` that shares a point with
    ``[b_starts[j], b_ends[j])``, or None. Empty intervals share nothing. O(n log n)."""
    a_starts, a_ends, b_starts, b_ends = (np.asarray(v, dtype=np.int64) for v in (a_starts, a_ends, b_starts, b_ends))
    a_live, b_live = np.flatnonzero(a_ends > a_starts), np.flatnonzero(b_ends > b_starts)
    starts = np.concatenate([a_starts[a_live], b_starts[b_live]])
    ends = np.concatenate([a_ends[a_live], b_ends[b_live]])
    side = np.concatenate([np.zeros(a_live.size, np.int8), np.ones(b_live.size, np.int8)])
    order = np.argsort(starts, kind="stable")
    starts, ends, side = starts[order], ends[order], side[order]
    floor = np.iinfo(np.int64).min
    # an interval clashes with the other side's earlier-starting intervals iff the furthest end
    # among them lies beyond its start (later-starting ones find it the same way)
    reach = [np.concatenate([[floor], np.maximum.accumulate(np.where(side == s, ends, floor))[:-1]]) for s in (0, 1)]
    clash = np.flatnonzero(np.where(side == 0, reach[1], reach[0]) > starts)
    if not clash.size:
        return None
    k = int(clash[0])
    earlier = np.flatnonzero((side[:k] != side[k]) & (ends[:k] > starts[k]))[0]
    pos = order[[k, earlier]] if side[k] == 0 else order[[earlier, k]]
    return int(a_live[pos[0]]), int(b_live[pos[1] - a_live.size])


def check_receive_disjoint(counts: np.ndarray, displs: np.ndarray, name: str) -> None:
    """Raise ValueError if two receive segments (of contiguous elements) share an element.

    (Segments of derived datatypes may interleave without sharing a byte, so only contiguous
    elements are checked.)
    """
    ranks = np.flatnonzero(counts > 0)
    order = ranks[np.argsort(displs[ranks], kind="stable")]
    ends = displs[order] + counts[order]
    clash = np.flatnonzero(displs[order[1:]] < ends[:-1])
    if clash.size:
        a, b = int(order[clash[0]]), int(order[clash[0] + 1])
        raise ValueError(f"{name}: the segments for ranks {a} (elements {displs[a]}..{displs[a] + counts[a] - 1}) "
                         f"and {b} (elements {displs[b]}..{displs[b] + counts[b] - 1}) overlap; MPI forbids "
                         f"overlapping receive segments")


def _address(flat) -> int:
    if isinstance(flat, np.ndarray):
        return int(flat.__array_interface__["data"][0])
    return int(_backend._interface(flat)["data"][0])


def _byte_spans(spec):
    """(start, end) addresses of every rank's segment: the bytes MPI reads or writes for it."""
    base = _address(spec.flat)
    first = base + spec.displs * spec.extent + spec.true_lb
    ends = first + np.maximum(spec.counts - 1, 0) * spec.extent + spec.true_extent
    return first, np.where(spec.counts > 0, ends, first)


def check_not_aliased(send, recv) -> None:
    """Raise ValueError if a send segment and a receive segment share a byte.

    Segments of one buffer that do not touch are allowed (MPI forbids passing one buffer twice,
    but MPI implementations accept it, and so does embzip: a drop-in keeps working programs
    working). Derived datatypes are compared by the span of each segment, so two interleaved
    strided segments of one buffer count as overlapping.
    """
    if send.flat is None or recv.flat is None or send.device != recv.device:
        return
    sent, received = _byte_spans(send), _byte_spans(recv)
    pair = first_clash(*sent, *received)
    if pair is not None:
        d, s = pair
        raise ValueError(f"sendbuf and recvbuf share memory: the segment sent to rank {d} overlaps the one "
                         f"received from rank {s}; MPI forbids it and the result would be undefined. To "
                         f"exchange in place pass MPI.IN_PLACE (or None) as sendbuf, as for mpi4py")
