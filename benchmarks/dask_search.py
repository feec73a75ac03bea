"""Wall time of a grid search over HalfUNetRegressor, sequential vs a local Dask cluster.

    python benchmarks/dask_search.py

GridSearchCV over latent_dim x loss (2 x 2) with 3 contiguous folds (12 fits of one decoder, 5 epochs each)
on 600 frames of 32x64 from the built-in natural movie. Sequential: one process using every
core. Dask: LocalCluster of 2 worker processes, one torch thread each, through joblib's dask
backend.
"""

import os
import time

import joblib
import torch
from distributed import Client, LocalCluster
from sklearn.model_selection import GridSearchCV, KFold

from _results import markdown_table, write_section
from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.datasets import make_natural_movie_v1
from sklearn.decomposition import PCA


def search():
    return GridSearchCV(HalfUNetRegressor(ensemble_size=1, max_epochs=5, random_state=0),
                        {"latent_dim": [256, 512], "loss": ["mse", "l1"]},
                        cv=KFold(3), n_jobs=-1)


def main():
    recording = make_natural_movie_v1(300, (32, 64), n_neurons=200, n_repeats=2, seed=0)
    X, y, _, _ = recording.train_test_split()
    z = PCA(16, random_state=0).fit_transform(X).astype("float32")  # stands in for a CEBRA embedding
    start = time.perf_counter()
    sequential = search().set_params(n_jobs=None).fit(z, y)
    sequential_s = time.perf_counter() - start
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster):
        start = time.perf_counter()
        with joblib.parallel_backend("dask"):
            on_dask = search().fit(z, y)
        dask_s = time.perf_counter() - start
    same = (sequential.best_params_ == on_dask.best_params_)
    rows = [[f"sequential ({torch.get_num_threads()} torch threads)", f"{sequential_s:.1f}", "1.00", sequential.best_params_],
            ["LocalCluster, 2 workers x 1 thread", f"{dask_s:.1f}", f"{sequential_s / dask_s:.2f}", on_dask.best_params_]]
    write_section("Distributed grid search", markdown_table(["run", "wall time (s)", "speed-up", "best parameters"], rows),
                  f"12 fits ({len(z)} samples of 32x64, 5 epochs each) on {os.cpu_count()} cores; same best parameters: {same}.")


if __name__ == "__main__":
    main()
