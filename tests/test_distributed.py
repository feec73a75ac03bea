"""A grid search and a CEBRA-pipeline cross-validation on a local Dask cluster (2 worker
processes, joblib's dask backend) give what the sequential runs give."""

import joblib
import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV, KFold, cross_validate

from cebra_halfunet import HalfUNetRegressor

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow  # starts a Dask cluster


@pytest.fixture(scope="module")
def client():
    # Workers get one torch thread each (dask's default pre-spawn OMP_NUM_THREADS=1).
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


def test_grid_search_on_dask_equals_the_sequential_search(data, client, one_thread, default_evaluation_period):
    z, images = data
    grid = {"latent_dim": [8, 16], "loss": ["mse", "l1"]}

    def search():
        return GridSearchCV(HalfUNetRegressor(max_epochs=2, batch_size=16, random_state=0), grid, cv=KFold(2), n_jobs=-1)

    sequential = search().set_params(n_jobs=None).fit(z, images)
    with joblib.parallel_backend("dask"):
        on_dask = search().fit(z, images)
    assert client.run(torch.get_num_threads) == {address: 1 for address in client.scheduler_info()["workers"]}
    np.testing.assert_array_equal(on_dask.cv_results_["mean_test_score"], sequential.cv_results_["mean_test_score"])
    assert on_dask.best_params_ == sequential.best_params_
    np.testing.assert_array_equal(on_dask.predict(z), sequential.predict(z))


def test_cebra_pipeline_cross_validation_on_dask(client, one_thread, default_evaluation_period):
    cebra = pytest.importorskip("cebra")
    from sklearn.pipeline import make_pipeline

    from cebra_halfunet import CEBRAEmbedding
    from cebra_halfunet.datasets import make_moving_blobs

    recording = make_moving_blobs(160, (8, 16), n_neurons=20, seed=0)
    pipeline = make_pipeline(
        CEBRAEmbedding(cebra.CEBRA(model_architecture="offset10-model", output_dimension=4, max_iterations=5,
                                   batch_size=64, device="cpu"), random_state=0),
        HalfUNetRegressor(latent_dim=8, max_epochs=1, random_state=0),
    )
    with joblib.parallel_backend("dask"):
        result = cross_validate(pipeline, recording.neural, recording.frames, cv=KFold(2), n_jobs=-1, error_score="raise")
    assert result["test_score"].shape == (2,) and np.isfinite(result["test_score"]).all()
