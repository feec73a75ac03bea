"""scikit-learn's estimator checks: all of them pass, none is listed as an expected failure."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from cebra_halfunet import HalfUNetRegressor

pytestmark = pytest.mark.slow  # 3 decoders x 20 epochs, for each of the checks


# check_regressors_train fits 200 samples of a tabular problem and wants R^2 > 0.5: batch 16
# gives each of the 20 epochs 11 steps (batch 64 gave 3 and R^2 0.43).
@parametrize_with_checks([HalfUNetRegressor(latent_dim=16, max_epochs=20, batch_size=16, random_state=0)])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
