"""Scaling table: wall time and peak memory per stage of `correct` at 10k, 100k, 300k, 1M wells.

    python benchmarks/bench_scale.py --wells 10000 100000               # the table, 2 epochs each
    python benchmarks/bench_scale.py --wells 10000 100000 --plot benchmarks/results/scale.png
    python benchmarks/bench_scale.py --wells 20000 --stages-only         # one size, no table files

Each size: ``make_scale_screen.py`` writes the screen to Parquet plate by plate (not timed), then a
fresh process runs the real correction path, ``runs.run_correction`` (read -> preprocess -> write
input.parquet -> fit: input transform, neighbour mining, training -> save -> transform -> write the
embedding -> "did it help?"), and then the scorecard (``metrics.evaluate``, which samples where a metric
is quadratic; skipped above ``--scorecard-max`` wells). The run's own stage messages mark the stages:
at each one the process's peak RSS (VmHWM) is read and reset (``/proc/self/clear_refs``), so every
stage reports its own peak. Training runs ``--epochs`` epochs (default 2) and is reported per epoch (the
epochs after the first, which also warms up):
50-epoch figures are extrapolated (training is linear in wells x epochs) and labelled as such.

Results: one JSON per size in ``benchmarks/results/scale_<wells>.json``, the table printed (markdown)
and, with ``--plot``, a PNG of time and peak memory per stage against wells. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"

# runs.py stage messages -> the table's stage names (neighbour messages split fit into mining / training).
STAGE_OF = {"reading input": "read", "preprocessing": "preprocess", "training": "input transform",
            "saving model": "save", "writing embedding": "transform + write",
            "did it help? comparing with the uncorrected profiles": "did it help"}
STAGES = ("read", "preprocess", "input transform", "mining", "training", "save", "transform + write",
          "did it help", "scorecard")


def vm_hwm_mb() -> float:
    """Peak resident memory of this process since start or the last reset, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_hwm() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


class StageClock:
    """Progress callback that records wall time and peak RSS per stage from the run's messages."""

    def __init__(self) -> None:
        self.stage, self.t = "start", time.perf_counter()
        self.rows: dict[str, dict[str, float]] = {}
        self.epoch_ends: list[float] = []
        reset_hwm()

    def switch(self, stage: str) -> None:
        now = time.perf_counter()
        row = self.rows.setdefault(self.stage, {"s": 0.0, "peak_mb": 0.0})
        row["s"] += now - self.t
        row["peak_mb"] = max(row["peak_mb"], vm_hwm_mb())
        self.stage, self.t = stage, now
        reset_hwm()

    def __call__(self, fraction: float, message: str) -> None:
        if message.startswith("epoch "):
            self.epoch_ends.append(time.perf_counter())
        if message in STAGE_OF:
            self.switch(STAGE_OF[message])
        elif message.startswith("mining neighbours") and self.stage != "mining":
            self.switch("mining")
        elif self.stage == "mining" and message.startswith("neighbours: ") and " pairs, " in message:
            self.switch("training")  # the last mining message; training reports only at epoch ends


def score_run(run_dir: str) -> dict:
    """Read a finished run, then time the scorecard on it (the read is timed and measured apart)."""
    from cpdistiller_core.metrics import evaluate
    from cpdistiller_core.runs import Run

    reset_hwm()
    t = time.perf_counter()
    run = Run.open(run_dir)
    emb, base = run.embedding(), run.input()
    read = {"s": round(time.perf_counter() - t, 1), "peak_mb": round(vm_hwm_mb())}
    reset_hwm()
    t = last = time.perf_counter()
    steps: dict[str, float] = {}

    def tick(_fraction: float, message: str) -> None:  # evaluate reports once per group of metrics
        nonlocal last
        now = time.perf_counter()
        steps[message.split(": ", 1)[-1]] = round(now - last, 1)
        last = now
        print(f"{now - t:8.1f} s  {message}", file=sys.stderr, flush=True)

    card = evaluate(emb, baseline=base, progress=tick)
    scored = {"s": round(time.perf_counter() - t, 1), "peak_mb": round(vm_hwm_mb()), "steps": steps}
    notes = card.scores.set_index("metric")["note"]
    return {"wells": emb.n_wells, "read": read, "scorecard": scored,
            "sampled": sorted({n for n in notes if "sample" in n or "random" in n}),
            "metrics": sorted(card.wide().columns.drop(["method"], errors="ignore").tolist())}


def child(path: str, epochs: int, scorecard_max: int, effects: str, verdict: bool = True) -> dict:
    """In a fresh process: the real correction path on ``path``, then the scorecard."""
    from cpdistiller_core import runs
    from cpdistiller_core.runs import Run, RunSpec, run_correction

    if not verdict:  # --no-verdict: the run's "did it help?" stage is skipped (and reported as not run)
        runs._write_verdict = lambda *a, **k: {"status": "not run (bench_scale --no-verdict)", "problems": []}

    clock = StageClock()
    run_dir = Path(tempfile.mkdtemp(prefix="bench_scale_run_"))
    spec = RunSpec.build({"epochs": epochs, "min_steps": 0}, effects=effects)
    run_correction(path, run_dir, spec, progress=clock)
    clock.switch("scorecard")
    run = Run.open(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    n = report["input"]["wells"]
    if n <= scorecard_max:
        from cpdistiller_core.metrics import evaluate

        emb = run.embedding()
        evaluate(emb, baseline=run.input())
    clock.switch("end")
    rows = {k: v for k, v in clock.rows.items() if k not in ("start", "end")}
    if n > scorecard_max:
        rows.pop("scorecard", None)
    steps = report.get("train", {}).get("steps")
    ends = clock.epoch_ends
    # Per epoch: the epochs after the first (the first also carries warm-up); with one epoch, all of it.
    per_epoch = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else rows["training"]["s"]
    return {"wells": n, "features": report["input"]["features"], "plates": report["input"]["plates"],
            "epochs": epochs, "steps": steps, "epoch_s": per_epoch, "stages": rows, "timings": report["timings"],
            "peak_mb": max(r["peak_mb"] for r in rows.values()),
            "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0), "run_dir": str(run_dir)}


def fmt_row(r: dict) -> str:
    st = r["stages"]
    epoch = r["epoch_s"]

    def cell(k: str) -> str:
        return f"{st[k]['s']:.1f} s / {st[k]['peak_mb'] / 1024:.2f} GB" if k in st else "not run"
    cells = [cell(k) for k in ("read", "preprocess", "mining")]
    cells.append(f"{epoch:.1f} s / {st.get('training', {}).get('peak_mb', 0) / 1024:.2f} GB")
    cells += [cell("transform + write"), cell("scorecard")]
    fifty = sum(v["s"] for k, v in st.items() if k != "scorecard") + (50 - r["epochs"]) * epoch
    return (f"| {r['wells']:,} | {r['plates']} | " + " | ".join(cells) +
            f" | **{r['peak_mb'] / 1024:.2f} GB** ({r['peak_mb'] * 1024 / r['wells']:.1f} KB/well) | "
            f"{fifty / 60:.1f} min (extrapolated) |")


HEADER = ("| wells | plates | read | preprocess | mining | training per epoch | transform + write | scorecard "
          "| peak (all stages) | correct, 50 epochs |\n|---|---|---|---|---|---|---|---|---|---|")


def plot(rows: list[dict], out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    n = [r["wells"] for r in rows]
    for k in STAGES:
        if any(k in r["stages"] for r in rows):
            s = [r["epoch_s"] if k == "training" else r["stages"].get(k, {}).get("s", float("nan")) for r in rows]
            m = [r["stages"].get(k, {}).get("peak_mb", float("nan")) / 1024 for r in rows]
            label = "training (per epoch)" if k == "training" else k
            a.plot(n, s, "o-", label=label)
            b.plot(n, m, "o-", label=label)
    for ax, yl in ((a, "wall time (s)"), (b, "peak RSS (GB)")):
        ax.set_xscale("log")
        ax.set_yscale("log" if ax is a else "linear")
        ax.set_xlabel("wells (1,446 features)")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    b.axhline(16, color="k", ls="--", lw=0.8)
    b.legend(fontsize=7)
    fig.suptitle("cpDistiller correct: time and peak memory per stage (2-core CPU)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wells", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--features", type=int, default=1446)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--effects", default="batch,row,column")
    ap.add_argument("--scorecard-max", type=int, default=100000, help="skip the scorecard above this many wells")
    ap.add_argument("--no-verdict", action="store_true", help="skip the run's 'did it help?' stage (saves time)")
    ap.add_argument("--plot", help="write a PNG of the table")
    ap.add_argument("--stages-only", action="store_true", help="print the rows; write no result files")
    ap.add_argument("--score", metavar="RUN_DIR",
                    help="only time the scorecard (metrics.evaluate, sampled where quadratic) of a finished run, "
                         "e.g. the run_dir a size's JSON names; prints seconds and peak memory")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.score:
        print(json.dumps(score_run(args.score)))
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.epochs, args.scorecard_max, args.effects, not args.no_verdict)))
        return 0
    from make_scale_screen import write_screen

    rows = []
    for n in args.wells:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"screen_{n}.parquet"
            gen = write_screen(path, n, args.features)
            out = subprocess.run([sys.executable, __file__, "--child", str(path), "--epochs", str(args.epochs),
                                  "--effects", args.effects, "--scorecard-max", str(args.scorecard_max),
                                  *(["--no-verdict"] if args.no_verdict else [])],
                                 capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return out.returncode
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["generate_s"] = gen["seconds"]
        row["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        rows.append(row)
        print(json.dumps(row["stages"]), flush=True)
        if not args.stages_only:
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / f"scale_{row['wells']}.json").write_text(json.dumps(row, indent=1))
    print(HEADER)
    for r in rows:
        print(fmt_row(r))
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
