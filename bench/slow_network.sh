#!/usr/bin/env bash
# Run bench/alltoall.py with 4 ranks on a rate-limited link and unshaped, then print one table.
#
#   sudo bench/slow_network.sh                 # 1 Gbit/s; PYTHON=.venv/bin/python by default
#   RATE=10gbit REPS=9 sudo bench/slow_network.sh
#
# The link: a private network namespace whose loopback is capped with tc tbf (netem is not
# needed: only bandwidth is shaped). All 4 ranks run inside it and talk over TCP on that
# loopback (MPICH: no shared memory, OFI tcp provider), so every payload byte crosses the
# shaped qdisc; `tc -s qdisc` proves it (the "wire MB/call" column). Traffic never leaves the
# namespace this script creates, and the namespace is deleted on exit (trap), also on errors.
# Three links are measured: "1 Gbit/s" (shaped tcp), "tcp loopback" (same transport, no cap),
# "shared memory" (MPICH's default on one host). Needs root (ip netns, tc).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
MPIEXEC=${MPIEXEC:-$(dirname "$PYTHON")/mpiexec}
RATE=${RATE:-1gbit}
REPS=${REPS:-7}
WARMUP=${WARMUP:-4}
RANKS=${RANKS:-4}
NS=embzip-bench-$$
OUT=$(mktemp -d "${TMPDIR:-/tmp}/embzip-alltoall.XXXXXX")

cleanup() {
    ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true  # only processes in our namespace
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$OUT"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "needs root (ip netns, tc)" >&2; exit 1; }
[ -x "$MPIEXEC" ] || { echo "no mpiexec at $MPIEXEC (pip install mpich mpi4py; or set MPIEXEC)" >&2; exit 1; }

ip netns add "$NS"
ip -n "$NS" link set lo up
TCP_ENV=(-genv MPIR_CVAR_NOLOCAL 1 -genv MPIR_CVAR_CH4_NETMOD ofi -genv FI_PROVIDER tcp -genv FI_TCP_IFACE lo)
COMMON=(-genv NUMBA_NUM_THREADS 1)  # RANKS processes already share the cores
BENCH=(bench/alltoall.py --reps "$REPS" --warmup "$WARMUP")

echo "== tcp loopback, unshaped" >&2
ip netns exec "$NS" "$MPIEXEC" -n "$RANKS" "${TCP_ENV[@]}" "${COMMON[@]}" "$PYTHON" "${BENCH[@]}" \
    --label "tcp loopback" --json "$OUT/tcp.json" >&2

echo "== tcp loopback shaped to $RATE (tbf)" >&2
ip netns exec "$NS" tc qdisc add dev lo root tbf rate "$RATE" burst 256kb latency 50ms
ip netns exec "$NS" "$MPIEXEC" -n "$RANKS" "${TCP_ENV[@]}" "${COMMON[@]}" "$PYTHON" "${BENCH[@]}" \
    --label "$RATE" --tc-dev lo --json "$OUT/shaped.json" >&2
ip netns exec "$NS" tc -s qdisc show dev lo >&2

echo "== shared memory (MPICH default, outside the namespace)" >&2
"$MPIEXEC" -n "$RANKS" "${COMMON[@]}" "$PYTHON" "${BENCH[@]}" --label "shared memory" --json "$OUT/shm.json" >&2

echo
echo "Alltoallv, $RANKS ranks, DLRM step 26 tables x batch 2048 x dim 50 float32 per rank; $(nproc) cores; $(date -Is)"
"$PYTHON" bench/alltoall.py --report "$OUT/shaped.json" "$OUT/tcp.json" "$OUT/shm.json"
