"""Train a small DLRM on MovieLens-100K, then study its low-precision numerics.

    pip install numba numpy torch==2.13.0
    pip install --no-deps recbole==1.2.1      # only its bundled ml-100k files are read
    python examples/lowprec_dlrm.py [--epochs 6] [--seed 0]

torch trains the model (about a minute on 2 cores); everything after training runs in numpy and
numba through ``embzip.lowprec``: the trained weights become an ``embzip.lowprec.DLRM`` and
``study`` reports NE, AUC and model bytes for fp32, fp16, bf16, int8 MLP, 8/4/2-bit rowwise
embeddings and the mix found by the greedy per-layer search (budget +0.05% NE).

Task: predict rating >= 4 (55% of ratings) from user id, item id, occupation, gender, age
bucket, zip prefix, release decade and genres (a multi-hot bag), plus five dense features.
The split is random (80/20) because a time split leaves most test users unseen.
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import numpy as np


def _data_dir():
    try:
        import recbole
    except ImportError as exc:  # pragma: no cover - explained to the user
        raise SystemExit("this example needs the recbole package: "
                         "pip install --no-deps recbole==1.2.1") from exc
    return os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k")


def _read(path):
    with open(path, newline="", encoding="latin-1") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return [h.split(":")[0] for h in rows[0]], rows[1:]


def _vocab(values):
    ids = {v: i for i, v in enumerate(sorted(set(values)))}
    return np.array([ids[v] for v in values], np.int64), len(ids)


def load(seed):
    """Features, labels and table sizes for MovieLens-100K (random 80/20 split)."""
    d = _data_dir()
    _, inter = _read(os.path.join(d, "ml-100k.inter"))
    _, users = _read(os.path.join(d, "ml-100k.user"))
    _, items = _read(os.path.join(d, "ml-100k.item"))
    user = {r[0]: r for r in users}
    item = {r[0]: r for r in items}
    genres = sorted({g for r in items for g in r[3].split()})
    gid = {g: i for i, g in enumerate(genres)}
    uid, n_user = _vocab([r[0] for r in inter])
    iid, n_item = _vocab([r[1] for r in inter])
    occ, n_occ = _vocab([user[r[0]][3] for r in inter])
    gender, n_gender = _vocab([user[r[0]][2] for r in inter])
    ages = np.array([int(user[r[0]][1]) for r in inter])
    age_b = np.digitize(ages, [18, 25, 35, 45, 50, 56])
    zip_b, n_zip = _vocab([user[r[0]][4][:1] for r in inter])
    years = np.array([int(item[r[1]][2]) if item[r[1]][2].isdigit() else 1990 for r in inter])
    decade = np.clip((years - 1920) // 10, 0, 8)
    g_lists = [[gid[g] for g in item[r[1]][3].split()] for r in inter]
    labels = np.array([float(r[2]) >= 4 for r in inter], np.float32)

    n = len(inter)
    perm = np.random.default_rng(seed).permutation(n)
    train, test = perm[: int(0.8 * n)], perm[int(0.8 * n):]
    # popularity features from the training split only (no test leakage)
    item_cnt = np.bincount(iid[train], minlength=n_item)
    user_cnt = np.bincount(uid[train], minlength=n_user)
    dense = np.stack([ages / 100.0, (years - 1900) / 100.0,
                      np.array([len(g) for g in g_lists]) / 5.0,
                      np.log1p(item_cnt[iid]) / 6.0, np.log1p(user_cnt[uid]) / 6.0], 1)
    single = [uid, iid, occ, gender, age_b, zip_b, decade]
    sizes = [n_user, n_item, n_occ, n_gender, 7, n_zip, 9, len(genres)]
    names = ["user", "item", "occupation", "gender", "age", "zip", "decade", "genres"]

    def split(rows):
        g = [g_lists[i] for i in rows]
        offsets = np.cumsum([0] + [len(x) for x in g[:-1]]).astype(np.int64)
        indices = np.array([v for x in g for v in x], np.int64)
        sparse = [f[rows] for f in single] + [(indices, offsets)]
        return {"dense": dense[rows].astype(np.float32), "sparse": sparse,
                "labels": labels[rows]}

    return split(train), split(test), sizes, names


def train_dlrm(train, sizes, dim=16, epochs=6, seed=0, batch=512):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    class DLRM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.ModuleList(nn.EmbeddingBag(s, dim, mode="sum") for s in sizes)
            for e in self.emb:
                nn.init.normal_(e.weight, std=0.05)
            self.bottom = nn.Sequential(nn.Linear(5, 64), nn.ReLU(), nn.Linear(64, dim), nn.ReLU())
            f = len(sizes) + 1
            self.top = nn.Sequential(nn.Linear(dim + f * (f - 1) // 2, 64), nn.ReLU(),
                                     nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))
            self.li, self.lj = torch.tril_indices(f, f, offset=-1)

        def forward(self, dense, sparse):
            h = self.bottom(dense)
            feats = [h] + [e(i, o) for e, (i, o) in zip(self.emb, sparse)]
            t = torch.stack(feats, 1)
            z = torch.bmm(t, t.transpose(1, 2))[:, self.li, self.lj]
            return self.top(torch.cat([h, z], 1))[:, 0]

    model = DLRM()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-6)
    loss_fn = nn.BCEWithLogitsLoss()
    n = train["labels"].shape[0]
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(n)
        for lo in range(0, n, batch):
            rows = order[lo:lo + batch]
            dense, sparse, y = _torch_batch(train, rows)
            opt.zero_grad()
            loss_fn(model(dense, sparse), y).backward()
            opt.step()
    return model


def _torch_batch(data, rows):
    import torch

    sparse = []
    for f in data["sparse"]:
        if isinstance(f, tuple):
            idx, offs = f
            ends = np.append(offs[1:], idx.size)
            parts = [idx[offs[r]:ends[r]] for r in rows]
            o = np.cumsum([0] + [len(p) for p in parts[:-1]])
            sparse.append((torch.from_numpy(np.concatenate(parts)), torch.from_numpy(o)))
        else:
            sparse.append((torch.from_numpy(f[rows]), torch.arange(len(rows))))
    return (torch.from_numpy(data["dense"][rows]), sparse,
            torch.from_numpy(data["labels"][rows]))


def to_numpy_dlrm(model, names):
    from embzip.lowprec import DLRM

    def mlp(seq):
        return [(m.weight.detach().numpy(), m.bias.detach().numpy())
                for m in seq if hasattr(m, "weight")]

    return DLRM([e.weight.detach().numpy() for e in model.emb], mlp(model.bottom),
                mlp(model.top), table_names=names)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=0.0005, help="relative NE budget")
    args = ap.parse_args(argv)

    import torch

    from embzip.lowprec import forward, study

    t0 = time.perf_counter()
    train, test, sizes, names = load(args.seed)
    model = train_dlrm(train, sizes, epochs=args.epochs, seed=args.seed)
    t_train = time.perf_counter() - t0
    np_model = to_numpy_dlrm(model, names)

    # the numpy model is the torch model: same logits up to fp32 summation order
    rows = np.arange(min(2048, test["labels"].shape[0]))
    with torch.no_grad():
        ref = model(*_torch_batch(test, rows)[:2]).numpy()
    sub = {"dense": test["dense"][rows], "sparse": [_first(f, rows.size) for f in test["sparse"]]}
    ours = forward(np_model, sub["dense"], sub["sparse"], "fp32")
    print(f"trained in {t_train:.1f} s; |torch - numpy| logits max {np.abs(ref - ours).max():.2e}",
          flush=True)
    print(f"test: {test['labels'].shape[0]} samples, positive rate {test['labels'].mean():.3f}\n",
          flush=True)

    t1 = time.perf_counter()
    result = study(np_model, test, budget=args.budget, batch_size=10_000)
    print(result)
    steps = result.search["steps"]
    print(f"\nsearch took {len(steps)} steps; study ran in {time.perf_counter() - t1:.1f} s")


def _first(feature, n):
    if isinstance(feature, tuple):
        idx, offs = feature
        end = offs[n] if n < offs.size else idx.size
        return idx[:end], offs[:n]
    return feature[:n], np.arange(n, dtype=np.int64)


if __name__ == "__main__":
    main()
