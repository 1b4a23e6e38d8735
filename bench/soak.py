"""Soak: a moderate steady load for minutes, following the bot process's resident memory.

The same three processes and simulated users as ``bench.load`` (playground here, bot and users
in children; photos, ✅ / ❌ and a model from the list), but the photos arrive at a steady
``--rate`` per second in total (Poisson arrivals shared out among ``--users``), for
``--minutes``. Every ``--sample`` seconds this process reads the bot's VmRSS from
/proc/<pid>/status. Prints a table per minute (RSS, answers, latency, the bot's CPU, the load
average), whether RSS stays flat after the warm-up (every later sample within ``--tolerance``
of the first one after ``--warm-up`` seconds), the errors and the feedback check of
``bench.load``, and writes a plot to ``bench/results/soak-<time>.png``.

``--tracemalloc N`` runs the bot with tracemalloc on (N frames a trace; it slows the bot's
Python code) and prints where Python memory grew between the end of the warm-up and the end.

    .venv/bin/python -m bench.soak [--minutes 10] [--rate 5] [--users 20] [--sample 5] [--warm-up 60]
                                   [--tolerance 0.10] [--tracemalloc 0] [bench.load's options]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.load import (
    FeedbackCheck,
    Outcome,
    add_common_args,
    bot_under_load,
    check_feedback,
    error_lines,
    error_total,
    latency_line,
    percentile,
    plan_from,
    print_feedback_check,
    proc_cpu_seconds,
    proc_status,
    users_in_child,
)
from bench.machine import machine_line

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Sample:
    at: float  # seconds from the start
    rss_kb: int
    hwm_kb: int
    cpu_s: float  # the bot's CPU time so far
    load: float  # 1-minute load average


async def sample_memory(pid: int, every: float, started: float, samples: list[Sample]) -> None:
    """Append one sample every ``every`` seconds until cancelled."""
    while True:
        status = proc_status(pid)
        samples.append(Sample(time.monotonic() - started, status.get("VmRSS", 0), status.get("VmHWM", 0),
                              proc_cpu_seconds(pid), os.getloadavg()[0]))
        await asyncio.sleep(every - (time.monotonic() - started) % every)


@dataclass
class Flatness:
    baseline_mb: float
    low_mb: float
    high_mb: float
    end_mb: float
    slope_mb_per_min: float
    tolerance: float

    @property
    def flat(self) -> bool:
        return (self.high_mb <= self.baseline_mb * (1 + self.tolerance)
                and self.low_mb >= self.baseline_mb * (1 - self.tolerance))


def flatness(samples: list[Sample], warm_up: float, tolerance: float) -> Flatness:
    """RSS after the warm-up against the first sample after it; a least-squares slope over the same samples."""
    after = [s for s in samples if s.at >= warm_up] or samples[-1:]
    xs = [s.at / 60 for s in after]
    ys = [s.rss_kb / 1024 for s in after]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread if spread else 0.0
    return Flatness(ys[0], min(ys), max(ys), ys[-1], slope, tolerance)


def flat_from(samples: list[Sample], tolerance: float) -> float | None:
    """The earliest time (s) after which every sample stays within ``tolerance`` of that time's sample.

    Why: how long the warm-up really lasts is a finding, not a setting; a process that keeps
    growing has no such time before its last samples (None when only the last minute would do).
    """
    for start, first in enumerate(samples):
        base = first.rss_kb
        if all(abs(s.rss_kb - base) <= base * tolerance for s in samples[start:]):
            return first.at if samples[-1].at - first.at >= 60 else None
    return None


def minute_rows(samples: list[Sample], outcome: Outcome, minutes: int) -> list[dict[str, float]]:
    """One row per minute: RSS at its end and its highest, answers, latencies, bot CPU, load."""
    rows = []
    for minute in range(minutes):
        lo, hi = minute * 60, (minute + 1) * 60
        inside = [s for s in samples if lo <= s.at < hi + 1e-9]
        before = [s for s in samples if s.at <= lo + 1e-9]
        if not inside:
            continue
        start = before[-1] if before else inside[0]
        photo_ms = [ms for sent, ms in outcome.photos if ms is not None and lo <= sent - outcome.started < hi]
        press_ms = [ms for sent, _, ms in outcome.presses if ms is not None and lo <= sent - outcome.started < hi]
        lost = sum(1 for sent, ms in outcome.photos if ms is None and lo <= sent - outcome.started < hi)
        lost += sum(1 for sent, _, ms in outcome.presses if ms is None and lo <= sent - outcome.started < hi)
        span = inside[-1].at - start.at
        rows.append({
            "feedback": sum(1 for sent, action, ms in outcome.presses if action_stores(action) and ms is not None
                            and sent - outcome.started < hi),
            "minute": minute + 1, "rss": inside[-1].rss_kb / 1024, "rss_max": max(s.rss_kb for s in inside) / 1024,
            "photos": len(photo_ms), "presses": len(press_ms), "lost": lost,
            "p50": percentile(photo_ms, 50), "p95": percentile(photo_ms, 95), "press_p95": percentile(press_ms, 95),
            "cores": (inside[-1].cpu_s - start.cpu_s) / span if span > 0 else float("nan"),
            "load": inside[-1].load,
        })
    return rows


def action_stores(action: str) -> bool:
    """✅ and a model picked from the list store feedback (and a memory entry); the other presses only redraw."""
    return action in ("c", "l")


def print_table(rows: list[dict[str, float]]) -> None:
    print("per minute: RSS at its end and its highest; photos answered and presses edited (by when sent); lost: "
          "no answer or edit within 60 s; feedback: stored presses so far (the learning memory's size)")
    print(f"{'min':>3} {'RSS MB':>7} {'max MB':>7} {'photos':>6} {'presses':>7} {'lost':>4} {'p50 ms':>7} "
          f"{'p95 ms':>7} {'press p95':>9} {'feedback':>8} {'bot cores':>9} {'load':>5}")
    for r in rows:
        print(f"{r['minute']:>3} {r['rss']:>7.0f} {r['rss_max']:>7.0f} {r['photos']:>6} {r['presses']:>7} "
              f"{r['lost']:>4} {r['p50']:>7.0f} {r['p95']:>7.0f} {r['press_p95']:>9.0f} {r['feedback']:>8} "
              f"{r['cores']:>9.2f} {r['load']:>5.2f}")


def plot(samples: list[Sample], rows: list[dict[str, float]], flat: Flatness, warm_up: float, title: str,
         path: Path) -> Path:
    """RSS over time with the tolerance band, and the latency per minute under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True, height_ratios=[3, 2])
    minutes = [s.at / 60 for s in samples]
    top.plot(minutes, [s.rss_kb / 1024 for s in samples], color="tab:blue", label="bot RSS (VmRSS)")
    top.axvline(warm_up / 60, color="grey", linestyle=":", label="end of warm-up")
    top.axhspan(flat.baseline_mb * (1 - flat.tolerance), flat.baseline_mb * (1 + flat.tolerance), color="tab:green",
                alpha=0.12, label=f"±{flat.tolerance:.0%} of the RSS after warm-up")
    top.set_ylabel("MB")
    top.set_ylim(bottom=0)
    top.legend(loc="lower right", fontsize=8)
    top.set_title(title, fontsize=9)
    centres = [r["minute"] - 0.5 for r in rows]
    bottom.plot(centres, [r["p50"] for r in rows], marker="o", label="photo to answer p50")
    bottom.plot(centres, [r["p95"] for r in rows], marker="o", label="photo to answer p95")
    bottom.plot(centres, [r["press_p95"] for r in rows], marker="o", label="press to edit p95")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("minutes")
    highs = [r["p95"] for r in rows if r["p95"] == r["p95"]]
    if highs and max(highs) > 20 * max(1.0, min(r["p50"] for r in rows if r["p50"] == r["p50"])):
        bottom.set_yscale("log")
    else:
        bottom.set_ylim(bottom=0)
    bottom.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def print_growth(first: Path, last: Path, top: int = 15) -> None:
    """Where traced Python memory grew between two tracemalloc snapshots of the bot."""
    import tracemalloc

    before, after = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(last))
    total_before = sum(s.size for s in before.statistics("filename"))
    total_after = sum(s.size for s in after.statistics("filename"))
    print(f"tracemalloc: traced Python memory {total_before / 2**20:.1f} MB after warm-up, "
          f"{total_after / 2**20:.1f} MB at the end ({(total_after - total_before) / 2**20:+.1f} MB)")
    print("  grew most, by line where allocated:")
    for stat in after.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        print(f"    {stat.size_diff / 1024:+9.0f} kB {stat.count_diff:+8d} blocks  {frame.filename}:{frame.lineno}")
    print("  grew most, by allocation traceback (innermost frame last, project frames only):")
    for stat in after.compare_to(before, "traceback")[:5]:
        frames = [f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback
                  if "/work/" in f.filename and "site-packages" not in f.filename]
        print(f"    {stat.size_diff / 1024:+9.0f} kB {stat.count_diff:+8d} blocks  "
              f"{' <- '.join(reversed(frames[-6:])) or stat.traceback[0]}")


async def run_soak(args: argparse.Namespace) -> int:
    plan = plan_from(args)
    samples: list[Sample] = []
    snapshots: list[Path] = []
    traced: list[tuple[int, int]] = []  # (traced now, peak since the snapshot before), bytes
    checks: list[FeedbackCheck] = []
    with tempfile.TemporaryDirectory() as snap_dir:
        async with bot_under_load(args, trace_frames=args.tracemalloc) as bot:
            load_before = machine_line()
            base = proc_status(bot.pid)
            print(f"{load_before}; bot RSS before the warm-up photos {base.get('VmRSS', 0) / 1024:.0f} MB", flush=True)

            async def on_go() -> None:
                started = time.monotonic()
                sampler = asyncio.ensure_future(sample_memory(bot.pid, args.sample, started, samples))
                try:
                    if args.tracemalloc:
                        await asyncio.sleep(args.warm_up)
                        path = Path(snap_dir) / "after-warm-up.snap"
                        if (sizes := await asyncio.to_thread(bot.snapshot, path)) is not None:
                            snapshots.append(path)
                            traced.append(sizes)
                    await asyncio.Event().wait()
                finally:
                    sampler.cancel()

            outcome = await users_in_child(bot.url, plan, on_go)
            if args.tracemalloc:
                path = Path(snap_dir) / "end.snap"
                if (sizes := await asyncio.to_thread(bot.snapshot, path)) is not None:
                    snapshots.append(path)
                    traced.append(sizes)
            memory = proc_status(bot.pid)
            bot.on_stopped = lambda stopped: checks.append(check_feedback(stopped.db_url, outcome))
        minutes = int(round(args.minutes))
        rows = minute_rows(samples, outcome, minutes)
        flat = flatness(samples, args.warm_up, args.tolerance)
        after_line = machine_line()
        print(f"{plan.users} users, {plan.rate:g} photos/s offered for {args.minutes:g} min (Poisson arrivals; think "
              f"time mean {plan.think:g} s; {plan.press:.0%} of answers pressed: ✅ {plan.correct:.0%}, else ❌ and "
              f"a model), RSS every "
              f"{args.sample:g} s, {len(samples)} samples{', bot under tracemalloc' if args.tracemalloc else ''}")
        print_table(rows)
        photo_ms = [ms for _, ms in outcome.photos if ms is not None]
        press_ms = [ms for _, _, ms in outcome.presses if ms is not None]
        print(latency_line("photo to answer, whole run", photo_ms))
        print(latency_line("press to edited message, whole run", press_ms))
        verdict = "FLAT" if flat.flat else "NOT FLAT"
        print(f"RSS after the warm-up ({args.warm_up:g} s): {flat.baseline_mb:.0f} MB; afterwards "
              f"{flat.low_mb:.0f}-{flat.high_mb:.0f} MB ({(flat.high_mb / flat.baseline_mb - 1):+.1%} at most), "
              f"{flat.end_mb:.0f} MB at the end; slope {flat.slope_mb_per_min:+.2f} MB/min; peak (VmHWM) "
              f"{memory.get('VmHWM', 0) / 1024:.0f} MB: {verdict} within ±{flat.tolerance:.0%}")
        settled = flat_from(samples, args.tolerance / 2)
        print(f"RSS within ±{args.tolerance / 2:.0%} of itself from " +
              (f"{settled / 60:.1f} min to the end" if settled is not None else "no time before the last minute"))
        total = error_total(outcome, bot)
        print(f"errors: {total}")
        for line in error_lines(outcome, bot):
            print(line)
        print_feedback_check(checks[0], outcome)
        if len(snapshots) == 2:
            print_growth(snapshots[0], snapshots[1])
            print(f"  traced Python memory at its highest between the two snapshots: {traced[1][1] / 2**20:.1f} MB "
                  f"(transient allocations: freed again, but the allocator may keep the pages)")
        elif args.tracemalloc:
            print("tracemalloc: the snapshots could not be taken")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        title = (f"bench.soak {stamp}: {plan.users} users, {plan.rate:g} photos/s, {args.minutes:g} min; "
                 f"{verdict} ({(flat.high_mb / flat.baseline_mb - 1):+.1%} at most after warm-up)\n{load_before}")
        path = plot(samples, rows, flat, args.warm_up, title, RESULTS / f"soak-{stamp}.png")
        print(f"plot: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
        print(after_line + " (after)")
    return 0 if flat.flat and total == 0 and checks[0].ok else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5.0, help="photos/s offered in total")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--warm-up", type=float, default=60.0, help="seconds before RSS should stay flat")
    parser.add_argument("--tolerance", type=float, default=0.10, help="how far RSS may move after the warm-up")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="run the bot under tracemalloc with this many frames a trace, and compare snapshots")
    add_common_args(parser)
    args = parser.parse_args(argv)
    args.seconds = args.minutes * 60
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print the figures; exit status 1 when RSS grew, or anything was lost or failed."""
    args = parse_args(argv)
    print(machine_line() + " (at start)", flush=True)
    return asyncio.run(run_soak(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
