"""Small screens fast: wall time of a default correction of a ~2,000-well screen.

    .venv/bin/python benchmarks/bench_small_screen.py [--plates 5] [--repeat 2] [--config FILE]

Simulates ``--plates`` 384-well plates (one batch each, so batch, row and column are all corrected),
preprocesses them, and times ``CpDistiller().fit`` + ``transform`` with the engine defaults (or
``--config``). Prints steps, mining, training and total seconds and the CPU it ran on. The target
(issue 12) is 20 s on the 2-core development machine for 2,000 wells; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cpdistiller_core.api import CpDistiller  # noqa: E402
from cpdistiller_core.config import CpDistillerConfig  # noqa: E402
from cpdistiller_core.datasets import make_demo_screen  # noqa: E402
from cpdistiller_core.preprocess import preprocess  # noqa: E402
from cpdistiller_core.train import cpu_has_bf16  # noqa: E402


def cpu_name() -> str:
    """The CPU's model name (``platform.processor()`` is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plates", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--config", help="JSON/YAML CpDistillerConfig overrides (default: engine defaults)")
    args = ap.parse_args(argv)
    cfg = CpDistillerConfig.from_file(args.config) if args.config else CpDistillerConfig()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        screen = make_demo_screen(n_batches=args.plates, plates_per_batch=1)
        profiles, _ = preprocess(screen.profiles)
    precision = "bf16 autocast" if cfg.amp and cpu_has_bf16() else "float32"
    print(f"{profiles.n_wells} wells x {profiles.n_features} features, {args.plates} plates; "
          f"{cpu_name()}, {os.cpu_count()} CPUs, training in {precision}; load {os.getloadavg()[0]:.1f}")
    for i in range(args.repeat):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = CpDistiller(cfg.replace(seed=i)).fit(profiles, effects=("batch", "row", "column"))
            model.transform(profiles)
        total = time.perf_counter() - t0
        print(f"run {i}: {model.train_info['steps']} steps, mining {model.timings['neighbors_s']:.1f} s, "
              f"training {model.timings['train_s']:.1f} s, fit + transform {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
