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
"""
import argparse
import json
import re
import statistics
import sys

TRACE_LINE = re.compile(r'^\[(\d\d):(\d\d):(\d\d)\.(\d{6})\] \[trace\] (.*)$')


def events_of(lines):
    events = []
    for line in lines:
        found = TRACE_LINE.match(line)
        if not found:
            continue
        hours, minutes, seconds, micros, text = found.groups()
        ms = ((int(hours) * 60 + int(minutes)) * 60 + int(seconds)) * 1e3 + int(micros) / 1e3
        text = re.sub(r'\d+\.\d+ ms', '… ms', re.sub(r'step \d+', 'step N', text))
        events.append((ms, text))
    return sorted(events, key=lambda event: event[0])


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
               'hops': hops}, sys.stdout, indent=1, ensure_ascii=False)
    print()


if __name__ == '__main__':
    main()
