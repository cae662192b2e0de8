"""What a plot costs: the live view's redraw per mode, and downsampling throughput.

    python bench/plots.py                      # the recorded figures (about two minutes)
    python bench/plots.py --seconds 4 --points 1000000   # a quick run

Redraw (cases ``png`` and ``interactive``): an embedded collector, sensor
events sent at 200 and at 2,000 events/s (4 sources, confirmed sends, the
live frame bounded to 10 minutes) for ``--seconds`` each, into a
``LiveFrame`` with its view redrawing every 0.5 s, in each mode, the modes
interleaved at each rate. A redraw is what the view's timer does: the
default plot's update of the lines, then either an Agg render and a PNG for
the ``ipywidgets.Image`` (``png``, the default) or ipympl's render and the
PNG of the changed pixels it sends to the page (``interactive``). Reported:
redraws, milliseconds per redraw (median and p95, ``view.draw_seconds``), and
the process CPU per second of wall time while it ran.

Downsampling (cases ``minmax`` and ``minmaxlttb``): ``--points`` points (a
random walk at irregular 1 ms steps) cut to 1,000 pixel columns by
``theia_frames.frames.plot.downsample``, the numpy min/max per aligned
column against tsdownsample's compiled MinMaxLTTB; best and median of
``--repeat`` runs, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np


def redraw_case(mode: str, rate: float, seconds: float) -> dict[str, float]:
    import theia_frames as tf
    from theia_frames.live.widget import LiveView

    samples: list[float] = []
    with tf.serve(db=":memory:", port=0) as collector:
        live = tf.LiveFrame(collector.url, tf.Filter().match_tag("sensor"), window="10min").start()
        view = LiveView(live, mode="widget", every=0.5, interactive=(mode == "interactive"), theme="light")
        # prefill: a minute of events at this rate, so every redraw draws a realistic frame
        with tf.Client(collector.url) as client:
            start = time.time() - 60
            client.send_many(list(tf.sensor_events(int(rate * 60), sources=4, rate=rate, start=start, seed=1)), wait=True)
        seen = view.redraws

        def collect() -> None:
            nonlocal seen
            while not done.is_set():
                if view.redraws != seen:
                    seen = view.redraws
                    samples.append(view.draw_seconds)
                time.sleep(0.01)

        done = threading.Event()
        watcher = threading.Thread(target=collect, daemon=True)
        watcher.start()
        cpu0, wall0 = time.process_time(), time.monotonic()
        tf.simulate(collector.url, rate=rate, duration=seconds, sources=4)
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        done.set()
        watcher.join()
        rows = len(live)
        view.close()
        live.stop()
    samples.sort()
    return {
        "redraws": len(samples),
        "rows": rows,
        "ms_median": 1000 * statistics.median(samples) if samples else float("nan"),
        "ms_p95": 1000 * samples[min(len(samples) - 1, int(np.ceil(0.95 * (len(samples) - 1))))] if samples else float("nan"),
        "cpu_per_s": cpu / wall,
    }


def downsample_case(method: str, x: np.ndarray, y: np.ndarray) -> float:
    from theia_frames.frames.plot import downsample

    started = time.perf_counter()
    idx = downsample(x, y, 1000, method=method)
    elapsed = time.perf_counter() - started
    assert y[idx].max() == y.max() and y[idx].min() == y.min()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds of events per redraw case")
    parser.add_argument("--rates", default="200,2000", help="events per second, comma separated")
    parser.add_argument("--points", type=int, default=10_000_000, help="points of the downsampling cases")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default="redraw,downsample")
    args = parser.parse_args()
    print(f"# {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    results: dict[str, object] = {}
    if "redraw" in args.cases:
        for rate in [float(r) for r in args.rates.split(",")]:
            for mode in ("png", "interactive"):
                r = redraw_case(mode, rate, args.seconds)
                results[f"{mode}@{rate:g}"] = r
                print(f"{mode:12s} {rate:>6,.0f} ev/s  {r['redraws']:4d} redraws of {r['rows']:>9,} rows  "
                      f"{r['ms_median']:7.1f} ms median  {r['ms_p95']:7.1f} ms p95  CPU {r['cpu_per_s']:.2f} s/s")
            png, inter = results[f"png@{rate:g}"], results[f"interactive@{rate:g}"]
            print(f"  interactive / png at {rate:,.0f} ev/s: {inter['ms_median'] / png['ms_median']:.2f}x per redraw")  # type: ignore[index]
    if "downsample" in args.cases:
        rng = np.random.default_rng(1)
        x = np.cumsum(rng.integers(1, 2_000_000, args.points)).astype("int64")  # irregular steps, ~1 ms
        y = rng.normal(0, 1, args.points).cumsum()
        times: dict[str, list[float]] = {"minmax": [], "minmaxlttb": []}
        for _ in range(args.repeat):
            for method in times:
                times[method].append(downsample_case(method, x, y))
        for method, t in times.items():
            print(f"{method:12s} {args.points:,} points -> 1,000 columns: best {min(t) * 1000:7.1f} ms, "
                  f"median {statistics.median(t) * 1000:7.1f} ms, {args.points / min(t) / 1e6:6.1f} M points/s")
        ratio = statistics.median(times["minmax"]) / statistics.median(times["minmaxlttb"])
        print(f"  numpy minmax / tsdownsample MinMaxLTTB (median): {ratio:.2f}x the time")
        results["downsample"] = {m: {"best_s": min(t), "median_s": statistics.median(t)} for m, t in times.items()}
    print(json.dumps(results, default=float))


if __name__ == "__main__":
    main()
