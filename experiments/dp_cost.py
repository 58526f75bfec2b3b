"""CPU cost of one DP-SGD client round against the same client without DP.

    python -m experiments.dp_cost --data-dir /work/shared/datasets/mnist   # MNIST, ~1-2 min
    python -m experiments.dp_cost --dataset digits                         # no files, seconds

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016) needs one
gradient per example before clipping, which Opacus computes with module hooks
(``"hooks"``), ``torch.func.vmap`` (``"functorch"``) or torch's expanded weights
(``"ew"``). This script times one local round (``bcsfl_flower.training.train.train``,
one epoch, one torch thread, the federation's typical partition of the data) for:

- the same model and batch size with and without DP, for each per-example gradient
  mode (Opacus' own overhead);
- the configurations a user runs: the default non-DP client (``default`` model, batch
  32) against the recommended DP client (``--dp-model``, default the ScatterNet +
  linear ``scatter`` model that ``--model auto`` picks for 28x28 images, at
  ``--dp-batch-size`` 256, noise for eps 3 with the ``--dp-accountant``). The scatter
  model's features are computed once per client and process (printed apart) and cached,
  so its rounds train the linear head alone.

Each configuration is timed ``--repeats`` times after one warm-up round; the median is
reported. The last line is ``dp_vs_nondp_ratio=R``: seconds per round of the
recommended DP client over the default non-DP client.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings

from . import common


def _time_round(x, y, *, dataset: str, variant: str, batch_size: int, dp: bool, mode: str, repeats: int,
                accountant: str = "rdp") -> float:
    """Median seconds of one local epoch (a round) of ``train`` on ``(x, y)``."""
    import torch

    from bcsfl_flower.models import build_model
    from bcsfl_flower.training.privacy import client_noise
    from bcsfl_flower.training.train import train

    noise = client_noise(3.0, len(y), batch_size, 1, 10, accountant=accountant) if dp else 0.0
    times = []
    for r in range(repeats + 1):  # the first round warms up (allocations, Opacus wrapping)
        model = build_model(dataset, seed=0, variant=variant)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train(model, x, y, epochs=1, lr=0.05, batch_size=batch_size, seed=r, dp_noise=noise,
                  dp_grad_sample_mode=mode, dp_accountant=accountant)
        if r:
            times.append(time.perf_counter() - started)
        torch.manual_seed(0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", help="dataset (default mnist)")
    p.add_argument("--data-dir", help="dataset folder (see experiments.common.data_dir)")
    p.add_argument("--num-clients", type=int, default=20, help="the client holds 1/N of the data (default 20)")
    p.add_argument("--batch-size", type=int, default=32, help="non-DP batch size (default 32)")
    p.add_argument("--dp-batch-size", type=int, default=256, help="recommended DP batch size (default 256)")
    p.add_argument("--dp-model", default=None, choices=("default", "dp", "scatter"),
                   help="DP client's model variant (default: what --model auto picks, scatter (ScatterNet + "
                        "linear) for 28x28 images, else dp (tanh); default: the ReLU CNN)")
    p.add_argument("--dp-accountant", default="prv", choices=("rdp", "prv"),
                   help="recommended DP accountant (default prv)")
    p.add_argument("--modes", default="hooks,functorch,ew", help="Opacus per-example gradient modes to time")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds per configuration (default 2)")
    a = p.parse_args(argv)
    if a.dp_model is None:
        a.dp_model = "scatter" if a.dataset in ("mnist", "fashion-mnist") else "dp"
    import torch

    from bcsfl_flower.data import load_dataset

    torch.set_num_threads(1)  # one core per simulated client, as in bcsfl simulate
    ds = load_dataset(a.dataset, common.data_dir(a.dataset, a.data_dir) or None)
    n = len(ds.train_y) // a.num_clients
    x, y = ds.train_x[:n], ds.train_y[:n]
    print(f"{a.dataset}: one client of {n} examples, 1 epoch per round, 1 thread; {common.machine()}")

    def row(label: str, **kw) -> float:
        sec = _time_round(x, y, dataset=a.dataset, repeats=a.repeats, **kw)
        print(f"  {label:58s} {sec:7.2f} s/round", flush=True)
        return sec

    if a.dp_model == "scatter":  # a fixed front end: its features are computed once per shard, then cached
        from bcsfl_flower.models import build_model
        from bcsfl_flower.training.features import trainable_part

        started = time.perf_counter()
        trainable_part(build_model(a.dataset, variant="scatter"), x)
        print(f"  once per client and process: the scattering features of its {n} examples "
              f"{time.perf_counter() - started:7.2f} s (not in the rounds below)")
    print("same model, same batch: Opacus' overhead per per-example gradient mode")
    for variant, batch in dict.fromkeys((("default", a.batch_size), ("dp", a.dp_batch_size),
                                         (a.dp_model, a.dp_batch_size))):
        base = row(f"{variant} model, batch {batch}, no DP", variant=variant, batch_size=batch, dp=False, mode="hooks")
        for mode in common.words(a.modes):
            try:
                sec = row(f"{variant} model, batch {batch}, DP-SGD ({mode})", variant=variant, batch_size=batch,
                          dp=True, mode=mode)
                print(f"  {'':58s} x{sec / base:.2f}")
            except Exception as err:  # a mode Opacus cannot apply to this model: say so, go on
                print(f"  {variant} model, DP-SGD ({mode}): not available ({type(err).__name__}: {err})"[:160])
    print("what a user runs: default non-DP client vs recommended DP client")
    nondp = row(f"default model, batch {a.batch_size}, no DP", variant="default", batch_size=a.batch_size,
                dp=False, mode="hooks")
    dp = row(f"{a.dp_model} model, batch {a.dp_batch_size}, DP-SGD eps 3 ({a.dp_accountant}, hooks)",
             variant=a.dp_model, batch_size=a.dp_batch_size, dp=True, mode="hooks", accountant=a.dp_accountant)
    ratio = dp / nondp if nondp > 0 else math.inf
    print(f"dp_seconds_per_round={dp:.2f} nondp_seconds_per_round={nondp:.2f} dp_vs_nondp_ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
