"""What the pilot's validation sees: one decoder trained on the pilot's training part of a
suite condition, validated on its held-out frames and scored on the test frames after every
epoch, for a given number of stretches and gap (``splits.frame_validation_split``).

    OMP_NUM_THREADS=1 python benchmarks/pilot_split.py d --stretches 10 --gap 3
    OMP_NUM_THREADS=1 python benchmarks/pilot_split.py d --stretches 1 --gap 10

Frames are grouped by the hash of their bytes, as the estimator does. The validation SSIM per
epoch should move with the test SSIM; where it rises while the test falls, the held-out frames
have near-copies in the pilot's training (``RESULTS.md``, "Suite: what issue 28 changed").
Prints one line per epoch; the decoder runs as the default's pilot does (one member), with the
held-out frames as ``X_val``.
"""

import argparse
import copy
from pathlib import Path

from suite import CONDITIONS, load_condition, test_scores

from cebra_halfunet import HalfUNetRegressor
from cebra_halfunet.callbacks import Callback
from cebra_halfunet.splits import frame_digests, frame_ids, frame_validation_split


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("condition", choices=list(CONDITIONS))
    parser.add_argument("--stretches", type=int, default=10)
    parser.add_argument("--gap", type=int, default=None, help="frames (default: the estimator's)")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cebra_halfunet_suite"), help="embeddings")
    args = parser.parse_args()
    data = load_condition(CONDITIONS[args.condition], args.cache)
    split = frame_validation_split(frame_ids(frame_digests(data["y_train"])), 0.1, n_stretches=args.stretches, gap=args.gap)
    print(split.reason, flush=True)
    model = HalfUNetRegressor(random_state=0, ensemble_size=1, max_epochs=args.max_epochs, n_iter_no_change=3)

    class ScoreEachEpoch(Callback):
        def on_epoch_end(self, run, record):
            scoring = copy.copy(model)
            scoring.module_ = copy.deepcopy(run.evaluated).eval()
            test = test_scores(data, scoring.predict(data["z_test"]))["ssim"]
            validation = record["valid_score"]
            print(f"epoch {record['epoch']} ({record['phase']}): validation SSIM "
                  f"{'-' if validation is None else f'{validation:.4f}'}, test SSIM {test:.4f}", flush=True)

    held, train = split.held_out, split.train
    model.set_params(callbacks=[ScoreEachEpoch()]).fit(
        data["z_train"][train], data["y_train"][train], X_val=data["z_train"][held], y_val=data["y_train"][held]
    )


if __name__ == "__main__":
    main()
