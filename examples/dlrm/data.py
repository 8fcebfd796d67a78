"""MovieLens-100K as a click-through-rate task, loaded from the installed ``recbole`` package.

``pip install --no-deps recbole==1.2.1`` ships ``recbole/dataset_example/ml-100k/`` (100,000
ratings, 943 users, 1,682 items, user and item features). Nothing is downloaded or copied: the
files are read where pip put them.

Features
--------
sparse (one embedding table each; index 0 is padding, tokens start at 1):
    user_id, item_id, gender, occupation, zip_code, age_bucket, release_year, genres
    (``genres`` is multi-hot: up to ``MAX_GENRES`` ids, pooled by the embedding bag)
dense (standardized on the training split):
    age, release year, log1p(user rating count), log1p(item rating count) (counts on train only)
label:
    rating >= 4 (about 55 % positive)
split:
    random 80 / 10 / 10 with a fixed seed
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np

SPARSE = ("user_id", "item_id", "gender", "occupation", "zip_code", "age_bucket", "release_year", "genres")
DENSE = ("age", "year", "user_count", "item_count")
MAX_GENRES = 6
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # the MovieLens-1M age groups


def data_dir() -> str:
    """Folder of the ml-100k files inside the installed recbole package."""
    spec = importlib.util.find_spec("recbole")  # does not import recbole (it needs many deps)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("recbole is not installed: pip install --no-deps recbole==1.2.1")
    path = os.path.join(list(spec.submodule_search_locations)[0], "dataset_example", "ml-100k")
    if not os.path.isfile(os.path.join(path, "ml-100k.inter")):
        raise FileNotFoundError(f"ml-100k not found at {path}")
    return path


def _read(path):
    with open(path, encoding="latin-1") as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return header, rows


def _vocab(values):
    """token -> id starting at 1 (0 is padding), in sorted token order (deterministic)."""
    return {tok: i + 1 for i, tok in enumerate(sorted(set(values)))}


@dataclass
class Split:
    sparse: list  # per table: int64 [n, L] (L = 1, or MAX_GENRES for genres; 0 = padding)
    dense: np.ndarray  # float32 [n, len(DENSE)]
    label: np.ndarray  # float32 [n]

    def __len__(self):
        return len(self.label)

    def take(self, idx):
        return Split([s[idx] for s in self.sparse], self.dense[idx], self.label[idx])


@dataclass
class Dataset:
    train: Split
    valid: Split
    test: Split
    table_sizes: list  # rows of each embedding table (vocab + padding)
    table_names: tuple = SPARSE
    dense_names: tuple = DENSE


def load(seed: int = 0, path: str | None = None) -> Dataset:
    """Load, featurize and split MovieLens-100K (deterministic for a given seed)."""
    path = path or data_dir()
    _, inter = _read(os.path.join(path, "ml-100k.inter"))
    _, users = _read(os.path.join(path, "ml-100k.user"))
    _, items = _read(os.path.join(path, "ml-100k.item"))

    user = {r[0]: r for r in users}  # user_id, age, gender, occupation, zip
    item = {r[0]: r for r in items}  # item_id, title, year, genres
    uid_v = _vocab(r[0] for r in users)
    iid_v = _vocab(r[0] for r in items)
    gender_v = _vocab(r[2] for r in users)
    occ_v = _vocab(r[3] for r in users)
    zip_v = _vocab(r[4] for r in users)
    year_v = _vocab(r[2] for r in items)
    genre_v = _vocab(g for r in items for g in r[3].split())

    n = len(inter)
    u_ids = [r[0] for r in inter]
    i_ids = [r[1] for r in inter]
    age = np.array([float(user[u][1]) for u in u_ids], dtype=np.float64)
    year = np.array([float(item[i][2]) if item[i][2].strip().isdigit() else np.nan for i in i_ids])
    year = np.where(np.isnan(year), np.nanmedian(year), year)

    genres = np.zeros((n, MAX_GENRES), dtype=np.int64)
    for k, i in enumerate(i_ids):
        g = [genre_v[x] for x in item[i][3].split()][:MAX_GENRES]
        genres[k, :len(g)] = g

    col = lambda vals: np.asarray(vals, dtype=np.int64).reshape(n, 1)  # noqa: E731
    sparse = [
        col([uid_v[u] for u in u_ids]),
        col([iid_v[i] for i in i_ids]),
        col([gender_v[user[u][2]] for u in u_ids]),
        col([occ_v[user[u][3]] for u in u_ids]),
        col([zip_v[user[u][4]] for u in u_ids]),
        col(np.searchsorted(AGE_EDGES, age, side="right") + 1),
        col([year_v[item[i][2]] for i in i_ids]),
        genres,
    ]
    sizes = [len(uid_v) + 1, len(iid_v) + 1, len(gender_v) + 1, len(occ_v) + 1, len(zip_v) + 1,
             len(AGE_EDGES) + 2, len(year_v) + 1, len(genre_v) + 1]
    label = (np.array([float(r[2]) for r in inter]) >= 4).astype(np.float32)

    perm = np.random.default_rng(seed).permutation(n)
    n_tr, n_va = int(0.8 * n), int(0.1 * n)
    tr, va, te = perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]

    # count features from the training split only (no peeking at validation / test)
    u_cnt = np.bincount(sparse[0][tr, 0], minlength=sizes[0])[sparse[0][:, 0]]
    i_cnt = np.bincount(sparse[1][tr, 0], minlength=sizes[1])[sparse[1][:, 0]]
    dense = np.stack([age, year, np.log1p(u_cnt), np.log1p(i_cnt)], axis=1)
    mu, sd = dense[tr].mean(0), dense[tr].std(0) + 1e-6
    dense = ((dense - mu) / sd).astype(np.float32)

    full = Split(sparse, dense, label)
    return Dataset(full.take(tr), full.take(va), full.take(te), sizes)


if __name__ == "__main__":
    ds = load()
    print("tables", dict(zip(SPARSE, ds.table_sizes)))
    print("train/valid/test", len(ds.train), len(ds.valid), len(ds.test),
          "positive rate %.3f" % ds.train.label.mean())
