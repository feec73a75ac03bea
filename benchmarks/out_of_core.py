"""Peak resident memory of fit on targets stored in a memmap larger than 4 GB.

    python benchmarks/out_of_core.py [--gigabytes 4.2] [--seconds 60]

Writes a memmap of uint8 frames 128x256 (about 4.2 GB, 128,000 frames) to a temporary folder,
then fits HalfUNetRegressor on it in a child process: the full scans for the value range and
the mean image, then training on random batches read from the file, stopped by Ctrl-C after
``--seconds``. Reports the child's peak RSS (VmHWM, which counts the file pages mapped into
the process) next to the size of the data.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from _results import markdown_table, peak_rss_mib, write_section

SHAPE = (128, 256)


def child(path: str, n: int, seconds: float) -> None:
    from cebra_halfunet import HalfUNetRegressor

    frames = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, *SHAPE))
    X = np.random.default_rng(0).normal(size=(n, 32)).astype(np.float32)
    model = HalfUNetRegressor(ensemble_size=1, loss="mse", max_epochs=1, device="cpu", random_state=0)
    start = time.perf_counter()
    threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    try:
        model.fit(X, frames)
    except KeyboardInterrupt:
        pass
    print(time.perf_counter() - start, peak_rss_mib())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gigabytes", type=float, default=4.2)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = int(args.gigabytes * 1e9) // (SHAPE[0] * SHAPE[1])
    if args.child:
        return child(args.child[0], n, args.seconds)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "frames.u8")
        frames = np.memmap(path, dtype=np.uint8, mode="w+", shape=(n, *SHAPE))
        rng = np.random.default_rng(0)
        for start in range(0, n, 4096):
            count = min(4096, n - start)
            frames[start : start + count] = np.frombuffer(rng.bytes(count * SHAPE[0] * SHAPE[1]), np.uint8).reshape(count, *SHAPE)
        frames.flush()
        del frames
        out = subprocess.run([sys.executable, __file__, "--child", path, str(args.seconds), "--gigabytes",
                              str(args.gigabytes), "--seconds", str(args.seconds)],
                             capture_output=True, text=True, check=True).stdout
    seconds, peak = (float(value) for value in out.split()[-2:])
    size_mb = n * SHAPE[0] * SHAPE[1] / 2**20
    rows = [[f"{n:,} x 128x256 uint8 memmap", f"{size_mb:,.0f}", f"{peak:,.0f}", f"{peak / size_mb:.3f}", f"{seconds:.0f}"]]
    write_section("Out-of-core targets: peak RSS", markdown_table(
        ["targets", "data (MiB)", "peak RSS of fit (MiB)", "RSS / data", "fit time before Ctrl-C (s)"], rows),
        "Light body (latent 512), batch 32, CPU. The fit scanned the whole file twice (value range, mean image) "
        "and then trained on random batches until stopped.")


if __name__ == "__main__":
    main()
