"""Criterion's timing protocol, so the two medians are measured the same way.

Criterion warms a routine up for `warm_up` seconds (doubling the iteration count), estimates the
time per iteration, then takes `samples` samples: linear sampling (sample i runs i*d iterations)
unless that would take more than twice the measurement time, in which case flat sampling (every
sample runs the same count). The reported figure is the median over samples of the time per
iteration.
"""

import math
import statistics
import time


def warm_up(fn, seconds):
    """Runs `fn` for about `seconds`; returns the mean time of one iteration in ns."""
    total_iters, total_ns, iters = 0, 0, 1
    start = time.perf_counter_ns()
    while True:
        t0 = time.perf_counter_ns()
        for _ in range(iters):
            fn()
        total_ns += time.perf_counter_ns() - t0
        total_iters += iters
        if time.perf_counter_ns() - start > seconds * 1e9:
            return total_ns / total_iters
        iters *= 2


def iteration_counts(met_ns, samples, seconds):
    """The iteration count of each sample, as criterion's Auto sampling mode chooses them."""
    target = seconds * 1e9
    total_runs = samples * (samples + 1) // 2
    d = math.ceil(target / met_ns / total_runs)
    if total_runs * d * met_ns > 2 * target:
        per = max(1, math.ceil(target / samples / met_ns))
        return [per] * samples
    d = max(1, d)
    return [d * (i + 1) for i in range(samples)]


def measure(fn, warm_up_s, measure_s, samples):
    """The median time of one iteration of `fn`, in ns, over `samples` samples."""
    met = warm_up(fn, warm_up_s)
    per_iter = []
    for n in iteration_counts(met, samples, measure_s):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        per_iter.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(per_iter)
