#!/usr/bin/env python3
"""Where a parallel step's time goes: per-hop medians from a `--log-level trace` log.

    hybridiff launch --nproc 2 -- bench ... --run "cfg --cuda-graphs" --log-level trace > run.log 2>&1
    python3 bench/trace_hops.py run.log [--skip-steps 3] > hops.json

The trace lines of every process of one host ([HH:MM:SS.micro] [trace] ...; the processes share the clock) are
put in time order and cut into steps at the driver's "step N: ... request(s) out" line. For each pair of
consecutive lines within a step (text with step numbers and durations masked) the script prints the median gap
in ms and how many steps had it, as JSON, in the order the pairs first appear, with the median step time. Give
each log one `--run`: pairs of different schedules would mix. The first --skip-steps steps (the untimed warm-up image's first steps and
CUDA-graph captures) are left out.

`busiest_worker_overhead_ms` is what a step costs beyond its busiest worker, from the workers' own lines ("step N:
worker W ... computed in T ms", which end when the worker's result is complete): from the last worker's end of one
step to the last worker's end of the next, less the longest compute time of that next step (median, 10th and 90th
percentile over the steps that follow a computed step; the same --skip-steps left out). It holds for schedules
whose workers run ahead of the driver (mode cfg's guided run), where the driver's own lines do not mark the
workers' steps.
"""
import argparse
import json
import re
import statistics
import sys

TRACE_LINE = re.compile(r'^\[(\d\d):(\d\d):(\d\d)\.(\d{6})\] \[trace\] (.*)$')
WORKER_LINE = re.compile(r'^step (\d+): worker (\d+) \w+ computed in (\d+\.\d+) ms$')


def timed_lines(lines):
    """(ms, text) of each trace line, in time order."""
    events = []
    for line in lines:
        found = TRACE_LINE.match(line)
        if not found:
            continue
        hours, minutes, seconds, micros, text = found.groups()
        ms = ((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1e3 + int(micros) / 1e3
        events.append((ms, text))
    return sorted(events, key=lambda event: event[0])


def events_of(lines):
    return [(ms, re.sub(r'\d+\.\d+ ms', '… ms', re.sub(r'step \d+', 'step N', text))) for ms, text in timed_lines(lines)]


def busiest_worker_overhead(lines, skip_steps):
    """Per step: the last worker's end less the last worker's end of the step before, less the step's longest
    compute time. A worker's step number going back starts a new image (its steps only go forward within one)."""
    images, current, last_step = [], {}, {}
    for ms, text in timed_lines(lines):
        found = WORKER_LINE.match(text)
        if not found:
            continue
        step, worker, compute_ms = int(found.group(1)), found.group(2), float(found.group(3))
        if step <= last_step.get(worker, -1):
            images.append(current)
            current, last_step = {}, {}
        last_step[worker] = step
        end, longest = current.get(step, (ms, compute_ms))
        current[step] = (max(end, ms), max(longest, compute_ms))
    images.append(current)
    overheads = []
    for image in images:
        for step in sorted(image)[1:]:
            if step - 1 in image:
                overheads.append(image[step][0] - image[step - 1][0] - image[step][1])
    overheads = overheads[skip_steps:]
    if not overheads:
        return None
    overheads.sort()
    return {'median': round(statistics.median(overheads), 3),
            'p10': round(overheads[len(overheads) // 10], 3),
            'p90': round(overheads[(9 * len(overheads)) // 10], 3),
            'steps': len(overheads)}


def steps_of(events):
    steps, current = [], []
    for ms, text in events:
        if 'request(s) out' in text and current:
            steps.append(current)
            current = []
        current.append((ms, text))
    if current:
        steps.append(current)
    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('log', nargs='?', help='the trace log (default: standard input)')
    parser.add_argument('--skip-steps', type=int, default=3, help='steps left out at the start (default 3)')
    args = parser.parse_args()
    lines = open(args.log).read().splitlines() if args.log else sys.stdin.read().splitlines()
    steps = steps_of(events_of(lines))[args.skip_steps:]
    if not steps:
        sys.exit('trace_hops.py: no steps in the log (was it written with --log-level trace?)')
    gaps = {}
    for step in steps:
        for (start, before), (end, after) in zip(step, step[1:]):
            gaps.setdefault((before, after), []).append(end - start)
    hops = [{'from': before, 'to': after, 'median_ms': round(statistics.median(values), 3), 'steps': len(values)}
            for (before, after), values in gaps.items()]
    # A step's time: from its requests out to the next step's (the last step has no next).
    step_ms = [later[0][0] - step[0][0] for step, later in zip(steps, steps[1:])]
    json.dump({'steps': len(steps), 'step_ms_median': round(statistics.median(step_ms), 3) if step_ms else None,
               'busiest_worker_overhead_ms': busiest_worker_overhead(lines, args.skip_steps), 'hops': hops},
              sys.stdout, indent=1, ensure_ascii=False)
    print()


if __name__ == '__main__':
    main()
