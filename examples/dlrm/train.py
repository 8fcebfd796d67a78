"""Hybrid-parallel DLRM on MovieLens-100K with a compressed all-to-all (embzip.comm).

    mpiexec -n 2 python examples/dlrm/train.py --iterations 200 --compress forward --policy dual

* Embedding tables are sharded by table over the ranks (table ``t`` lives on rank ``t % P``):
  each rank looks up and pools *its* tables for the whole global batch.
* The forward all-to-all sends every rank the pooled vectors of its samples (``[b, T, dim]``)
  through ``embzip.comm.Alltoallv`` with per-table error bounds from an
  :class:`embzip.adaptive.Policy` (``--policy fixed``: one bound; ``dual``: table classes by
  size x step-decay schedule). ``--compress forward+backward`` also compresses the backward
  all-to-all of the embedding-vector gradients, with the policy's bounds scaled by ``--bwd-scale``
  (default 0.1: a gradient's range is set by a few large entries, and the forward bounds would
  zero most of the rest).
* Bottom / top MLPs are data parallel: each rank runs its ``b`` samples and the gradients are
  summed with ``MPI.Allreduce`` on numpy views of the torch gradients.

The output ends with a ``stats`` line (all-to-all bytes and seconds), a ``result {json}``
line (also the training loss and the wall time, slowest rank, of every iteration: ``losses``,
``iter_times``) and, last, ``auc=<float> logloss=<float>`` on the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=256, help="samples per rank per iteration")
    p.add_argument("--dim", type=int, default=16, help="embedding dimension")
    p.add_argument("--lr", type=float, default=0.005, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compress", choices=["none", "forward", "forward+backward"], default="forward")
    p.add_argument("--policy", choices=["fixed", "dual"], default="dual")
    p.add_argument("--rel", type=float, default=0.03, help="bound of --policy fixed (fraction of the range)")
    p.add_argument("--by", choices=["size", "frequency"], default="size", help="table classes of --policy dual")
    p.add_argument("--horizon", type=int, default=65536, help="iterations of the dual policy's step decay")
    p.add_argument("--bwd-scale", type=float, default=0.1,
                   help="the backward all-to-all's bounds are the policy's times this factor: gradients "
                        "need tighter bounds (measured, 4 ranks, 3 seeds, bypass never: 1 -> AUC -0.0061, 0.3 -> "
                        "-0.0012, 0.1 -> -0.0004)")
    p.add_argument("--strategy", choices=["auto", "fast", "compact"], default="auto")
    p.add_argument("--bypass", choices=["auto", "never", "always"], default="auto",
                   help="embzip's cost-model bypass: auto, never (always compress), always (always raw)")
    p.add_argument("--eval-batch", type=int, default=2048, help="global batch of the test pass")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--max-test", type=int, default=0, help="evaluate on the first N test rows (0: all)")
    p.add_argument("--timing-skip", type=int, default=6,
                   help="leave the first N iterations out of the reported timings: first-call setup, and "
                        "embzip's calibration (the first 4 calls of each communicator, 2 compressed, 2 raw)")
    p.add_argument("--warm-only", action="store_true",
                   help="only compile the codec (fills numba's cache when EMBZIP_NUMBA_CACHE=1) and exit")
    args = p.parse_args(argv)
    for name in ("iterations", "batch_size", "dim", "eval_batch", "log_every", "threads", "horizon"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("max_test", "timing_skip"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, found {getattr(args, name)}")
    for name in ("bwd_scale", "rel", "lr"):
        if not 0 < getattr(args, name) < float("inf"):
            p.error(f"--{name.replace('_', '-')} must be finite and > 0, found {getattr(args, name)}")
    return args


def auc_score(y, s):
    """ROC AUC by the rank-sum formula, ties averaged."""
    y = np.asarray(y, dtype=bool)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = np.asarray(s)[order]
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    npos, nneg = y.sum(), (~y).sum()
    if npos == 0 or nneg == 0:
        return float("nan")
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def log_loss(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def warm_codec():
    """Compile (or load from numba's cache) the codec kernels the all-to-all uses: both encoders,
    1-D and row (2-D) frames, rel and abs bounds. Returns the seconds it took."""
    import embzip

    t0 = time.perf_counter()
    x = np.random.default_rng(0).normal(size=(4096, 16)).astype(np.float32)
    x[::4] = x[0]  # repeated rows: the dedup path
    for strategy in ("fast", "compact"):
        for data in (x, x.ravel()):
            for kw in (dict(rel_error=0.01), dict(abs_error=1e-3)):
                embzip.decompress(embzip.compress(data, strategy=strategy, **kw))
    return time.perf_counter() - t0


class Exchange:
    """The model-parallel <-> data-parallel all-to-alls of one communicator."""

    def __init__(self, comm, n_tables, dim, policy, compress, args, bypass=None):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, comm
        self.P, self.me = comm.Get_size(), comm.Get_rank()
        self.T, self.dim, self.policy, self.compress, self.args = n_tables, dim, policy, compress, args
        self.tables_of = [[t for t in range(n_tables) if t % self.P == r] for r in range(self.P)]
        self.mine = self.tables_of[self.me]
        self.bypass = {"auto": "auto", "never": False, "always": True}[args.bypass] if bypass is None else bypass
        self.totals = {k: 0.0 for k in ("fwd_raw", "fwd_sent", "bwd_raw", "bwd_sent", "fwd_s", "bwd_s",
                                        "fwd_compressed_calls", "bwd_compressed_calls", "fwd_calls", "bwd_calls")}
        # seconds of each call, per direction: the median tells a bypassed call's cost apart
        # from the few compressed ones (calibration, probes) that weigh on the mean
        self.seconds = {"fwd": [], "bwd": []}

    def _alltoallv(self, send, sc, recv, rc, compress, bounds, iteration, direction):
        MPI = self.MPI
        sd, rd = np.concatenate([[0], np.cumsum(sc)[:-1]]), np.concatenate([[0], np.cumsum(rc)[:-1]])
        sspec = [send, (sc.tolist(), sd.tolist()), MPI.FLOAT]
        rspec = [recv, (rc.tolist(), rd.tolist()), MPI.FLOAT]
        t0 = time.perf_counter()
        if compress:
            import embzip.comm

            stats = embzip.comm.Alltoallv(self.comm, sspec, rspec, rel_error=self.policy.default(iteration),
                                          bounds=bounds, strategy=self.args.strategy, bypass=self.bypass)
            raw, sent, done = stats.raw_bytes, stats.sent_bytes, stats.mode == "compressed"
        else:
            self.comm.Alltoallv(sspec, rspec)
            raw = sent = 4 * int(sc.sum() - sc[self.me])
            done = False
        dt = time.perf_counter() - t0
        tot = self.totals
        tot[f"{direction}_raw"] += raw
        tot[f"{direction}_sent"] += sent
        tot[f"{direction}_s"] += dt
        self.seconds[direction].append(dt)
        tot[f"{direction}_calls"] += 1
        tot[f"{direction}_compressed_calls"] += int(done)

    def forward(self, pooled, counts, iteration, compress):
        """``pooled`` float32 ``[B, local*dim]`` (B = sum(counts)) -> ``[counts[me], T, dim]``."""
        from embzip.comm import TableLayout

        P, me, dim, L = self.P, self.me, self.dim, len(self.mine)
        pooled = np.ascontiguousarray(pooled, dtype=np.float32)
        sc = np.asarray(counts, dtype=np.int64) * L * dim
        rc = np.array([counts[me] * len(self.tables_of[s]) * dim for s in range(P)], dtype=np.int64)
        recv = np.empty(int(rc.sum()), dtype=np.float32)
        bounds = TableLayout(dim, bounds=self.policy.bounds(iteration)[self.mine]) if compress else None
        self._alltoallv(pooled, sc, recv, rc, compress, bounds, iteration, "fwd")
        out = np.empty((counts[me], self.T, dim), dtype=np.float32)
        pos = 0
        for s in range(P):
            n = int(rc[s])
            out[:, self.tables_of[s], :] = recv[pos:pos + n].reshape(counts[me], len(self.tables_of[s]), dim)
            pos += n
        return out

    def backward(self, grad, counts, iteration, compress):
        """``grad`` ``[counts[me], T, dim]`` -> gradient of the pooled output ``[B, local*dim]``."""
        from embzip.comm import TableLayout

        P, me, dim, L = self.P, self.me, self.dim, len(self.mine)
        send = np.concatenate([grad[:, self.tables_of[s], :].reshape(-1) for s in range(P)]).astype(np.float32)
        sc = np.array([counts[me] * len(self.tables_of[s]) * dim for s in range(P)], dtype=np.int64)
        rc = np.asarray(counts, dtype=np.int64) * L * dim
        recv = np.empty(int(rc.sum()), dtype=np.float32)
        bounds = None
        if compress:
            b = self.policy.bounds(iteration)
            if self.T % P == 0:  # same number of tables for every destination: per-table bounds
                bounds = TableLayout(dim, bounds=np.stack([b[self.tables_of[s]] for s in range(P)]))
            else:  # one bound per destination: the tightest of its tables
                bounds = [float(b[self.tables_of[s]].min()) for s in range(P)]
        self._alltoallv(send, sc, recv, rc, compress, bounds, iteration, "bwd")
        return recv.reshape(int(np.sum(counts)), L * dim)


def main(argv=None):
    args = parse_args(argv)
    if args.warm_only:
        print(f"codec warm-up {warm_codec():.2f}s", flush=True)
        return
    from mpi4py import MPI
    import torch

    import data as mldata
    from model import DenseNet, Tables

    from embzip.adaptive import Policy, Schedule

    torch.set_num_threads(args.threads)
    world = MPI.COMM_WORLD
    P, me = world.Get_size(), world.Get_rank()
    say = (lambda *a: print(*a, flush=True)) if me == 0 else (lambda *a: None)

    ds = mldata.load(seed=args.seed)
    T = len(ds.table_sizes)
    if P > T:
        raise SystemExit(f"at most {T} ranks (one table each), found {P}")
    if args.batch_size * P > len(ds.train):  # (every rank sees the same numbers: all exit)
        raise SystemExit(f"the global batch ({args.batch_size} per rank x {P} ranks) is larger than the "
                         f"training split ({len(ds.train)} rows)")
    if args.policy == "fixed":
        policy = Policy.fixed(T, rel=args.rel, names=list(ds.table_names))
    else:
        if args.by == "size":
            metric = ds.table_sizes
        else:  # mean lookups per row on the training split
            metric = [float((s > 0).sum()) / max(n - 1, 1) for s, n in zip(ds.train.sparse, ds.table_sizes)]
        policy = Policy.dual(metric, by=args.by, schedule=Schedule.step(horizon=args.horizon),
                             names=list(ds.table_names))
    say(f"ranks={P} tables={T} sizes={ds.table_sizes} compress={args.compress} policy={args.policy}")
    say(f"policy {policy.to_json()}")
    say(f"bounds at it 0: {dict(zip(ds.table_names, policy.bounds(0).round(4).tolist()))}")

    # separate communicators: the forward, backward and test exchanges each get their own
    # cost-model state in embzip (their data differ)
    ex_fwd = Exchange(world.Dup(), T, args.dim, policy, args.compress, args)
    ex_bwd = Exchange(world.Dup(), T, args.dim, policy.scaled(args.bwd_scale), args.compress, args)
    # The test pass compresses whenever the forward does, cost model off: its few calls would
    # otherwise be the calibration's (2 compressed, 2 raw), and a configuration's test AUC
    # would mix compressed and raw batches. It is the AUC of serving through compressed all-to-alls.
    # (--bypass never / always are the caller's and kept.)
    ex_eval = Exchange(world.Dup(), T, args.dim, policy, args.compress, args,
                       bypass=False if args.bypass == "auto" else None)
    fwd_c = args.compress != "none"
    bwd_c = args.compress == "forward+backward"

    if args.compress != "none":  # numba compiles per process: keep it out of the timings
        warm = world.allreduce(warm_codec(), op=MPI.MAX)
        say(f"codec warm-up {warm:.2f}s (slowest rank)")

    torch.manual_seed(args.seed)  # identical dense replicas on every rank
    dense_net = DenseNet(len(ds.dense_names), T, args.dim)
    tables = Tables(ds.table_sizes, ex_fwd.mine, args.dim, seed=args.seed)
    opt = torch.optim.Adam(list(dense_net.parameters()) + list(tables.parameters()), lr=args.lr)
    bce = torch.nn.BCEWithLogitsLoss(reduction="sum")

    b, B = args.batch_size, args.batch_size * P
    counts = [b] * P
    rng = np.random.default_rng(args.seed + 1)  # same stream on every rank: same global batches
    perm, ptr = rng.permutation(len(ds.train)), 0
    losses, iter_times, t_start, t_iter = [], [], time.perf_counter(), 0.0
    for it in range(args.iterations):
        t0 = time.perf_counter()
        if ptr + B > len(perm):
            perm, ptr = rng.permutation(len(ds.train)), 0
        idx = perm[ptr:ptr + B]
        ptr += B
        mine = idx[me * b:(me + 1) * b]

        pooled = tables([s[idx] for s in ds.train.sparse])
        emb = torch.from_numpy(ex_fwd.forward(pooled.detach().numpy(), counts, it, fwd_c)).requires_grad_()
        logits = dense_net(torch.from_numpy(ds.train.dense[mine]), emb)
        loss_sum = bce(logits, torch.from_numpy(ds.train.label[mine]))
        opt.zero_grad(set_to_none=False)
        (loss_sum / B).backward()
        gpooled = ex_bwd.backward(emb.grad.numpy(), counts, it, bwd_c)
        if pooled.requires_grad:
            pooled.backward(torch.from_numpy(gpooled))
        for prm in dense_net.parameters():  # data parallel: sum the replicas' gradients in place
            world.Allreduce(MPI.IN_PLACE, prm.grad.numpy())
        opt.step()
        loss = world.allreduce(float(loss_sum.item())) / B
        losses.append(loss)
        iter_times.append(time.perf_counter() - t0)
        if it == min(args.timing_skip, args.iterations - 1) - 1:  # drop the first-call setup from the timings
            for ex in (ex_fwd, ex_bwd):
                ex.totals["fwd_s"] = ex.totals["bwd_s"] = 0.0
                ex.seconds = {"fwd": [], "bwd": []}
            t_iter = 0.0
        else:
            t_iter += time.perf_counter() - t0
        if (it + 1) % args.log_every == 0 or it == 0 or it + 1 == args.iterations:
            tot = ex_fwd.totals
            ratio = tot["fwd_raw"] / tot["fwd_sent"] if tot["fwd_sent"] else float("nan")
            say(f"it {it + 1}/{args.iterations} loss {loss:.4f} fwd_ratio {ratio:.2f} "
                f"elapsed {time.perf_counter() - t_start:.1f}s")

    # test split: every rank scores its share of each global batch
    test = ds.test if not args.max_test else ds.test.take(np.arange(min(args.max_test, len(ds.test))))
    dense_net.eval()
    preds, rows = [], []
    with torch.no_grad():
        for lo in range(0, len(test), args.eval_batch):
            idx = np.arange(lo, min(lo + args.eval_batch, len(test)))
            parts = np.array_split(idx, P)
            cnt = [len(q) for q in parts]
            pooled = tables([s[idx] for s in test.sparse]).numpy()
            emb = ex_eval.forward(pooled, cnt, args.iterations, fwd_c)
            logit = dense_net(torch.from_numpy(test.dense[parts[me]]), torch.from_numpy(emb))
            preds.append(torch.sigmoid(logit).numpy().astype(np.float64))
            rows.append(parts[me])
    gathered = world.allgather((np.concatenate(rows), np.concatenate(preds)))
    scores = np.empty(len(test))
    for r, pr in gathered:
        scores[r] = pr
    auc, ll = auc_score(test.label, scores), log_loss(test.label, scores)

    k = max(1, min(10, len(losses) // 4))
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    totals = {}
    for name, ex in (("fwd", ex_fwd), ("bwd", ex_bwd)):
        for key, v in ex.totals.items():
            if key.startswith(name):
                op = MPI.MAX if key.endswith("_s") else MPI.SUM  # seconds: slowest rank; counts: all ranks
                totals[key] = world.allreduce(v, op=op)
    for key in ("fwd_compressed_calls", "fwd_calls"):  # the test pass's forward all-to-alls
        totals[key.replace("fwd", "test")] = world.allreduce(ex_eval.totals[key], op=MPI.SUM)
    medians = {}  # the slowest rank's median call, as the means are the slowest rank's
    for name, ex in (("fwd", ex_fwd), ("bwd", ex_bwd)):
        calls = ex.seconds[name]
        medians[name] = world.allreduce(float(np.median(calls)) if calls else 0.0, op=MPI.MAX)
    iter_times = np.array(iter_times, dtype=np.float64)
    world.Allreduce(MPI.IN_PLACE, iter_times, op=MPI.MAX)  # per iteration: the slowest rank
    timed = args.iterations - min(args.timing_skip, args.iterations - 1)
    iter_s = world.allreduce(t_iter, op=MPI.MAX) / timed
    result = dict(ranks=P, compress=args.compress, policy=args.policy, seed=args.seed, iterations=args.iterations,
                  batch_per_rank=b, auc=auc, logloss=ll, train_loss_first=first, train_loss_last=last,
                  iter_s=iter_s, a2a_fwd_s=totals["fwd_s"] / timed, a2a_bwd_s=totals["bwd_s"] / timed,
                  a2a_fwd_median_s=medians["fwd"], a2a_bwd_median_s=medians["bwd"],
                  timed_iterations=timed, dim=args.dim, lr=args.lr,
                  compute_s=max(iter_s - (totals["fwd_s"] + totals["bwd_s"]) / timed, 0.0),
                  losses=[round(v, 6) for v in losses],  # training loss of every iteration (global batch)
                  iter_times=[round(v, 6) for v in iter_times.tolist()],
                  **{k: int(v) for k, v in totals.items() if not k.endswith("_s")})
    say(f"train_loss_first={first:.5f} train_loss_last={last:.5f}")
    say(f"stats fwd_raw_bytes={int(totals['fwd_raw'])} fwd_sent_bytes={int(totals['fwd_sent'])} "
        f"bwd_raw_bytes={int(totals['bwd_raw'])} bwd_sent_bytes={int(totals['bwd_sent'])} "
        f"fwd_compressed_calls={int(totals['fwd_compressed_calls'])}/{int(totals['fwd_calls'])} "
        f"bwd_compressed_calls={int(totals['bwd_compressed_calls'])}/{int(totals['bwd_calls'])} "
        f"test_compressed_calls={int(totals['test_compressed_calls'])}/{int(totals['test_calls'])} "
        f"a2a_fwd_s_per_iter={totals['fwd_s'] / timed:.4f} a2a_bwd_s_per_iter={totals['bwd_s'] / timed:.4f} "
        f"a2a_fwd_median_s={medians['fwd']:.4f} a2a_bwd_median_s={medians['bwd']:.4f} "
        f"iter_s={iter_s:.4f} (last {timed} iterations, slowest rank)")
    say("result " + json.dumps(result))
    say(f"auc={auc:.6f} logloss={ll:.6f}")


if __name__ == "__main__":
    try:
        main()
    except BaseException:  # one failing rank must not leave the others waiting in a collective
        if "mpi4py.MPI" in sys.modules:
            import traceback

            from mpi4py import MPI

            if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
                traceback.print_exc()
                sys.stderr.flush()
                MPI.COMM_WORLD.Abort(1)
        raise
