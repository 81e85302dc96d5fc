#!/usr/bin/env python3
"""Tests of bench/trace_hops.py: its per-step overhead over the busiest worker on a log written by hand (the
expected values worked out from its timestamps), and on the trace of a real run of `hybridiff bench`.

    trace_hops_test.py HYBRIDIFF_BINARY FIXTURES_DIR [unittest arguments]
"""
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest

BINARY = FIXTURES = None  # set from argv in __main__
TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'bench', 'trace_hops.py')
spec = importlib.util.spec_from_file_location('trace_hops', TOOL)
trace_hops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trace_hops)


def line(ms, text):
    return '[00:00:%02d.%06d] [trace] %s' % (ms // 1000, round((ms % 1000) * 1000), text)


# Two images on two workers. Image 1: step 1 ends at 15.5 (worker 0, the last), 5.3 ms after step 0's last end
# (10.2), its longest compute 5.0: 0.3 over. Step 2: 21.1 − 15.5 − 5.5 = 0.1. Image 2 (worker 0's step goes back to
# 0): step 1 ends at 35.25, 5.2 after 30.05, longest 5.0: 0.2. Two processes write lines out of time order.
HAND_LOG = [
    line(10.0, 'step 0: worker 0 run_cfg computed in 5.000 ms'),
    line(10.2, 'step 0: worker 1 run_cfg computed in 5.000 ms'),
    line(15.4, 'step 1: worker 1 next_cfg computed in 4.900 ms'),
    line(15.5, 'step 1: worker 0 next_cfg computed in 5.000 ms'),
    line(15.6, 'step 1: 2 request(s) out'),
    line(21.1, 'step 2: worker 1 next_cfg computed in 5.500 ms'),
    line(21.0, 'step 2: worker 0 next_cfg computed in 5.200 ms'),
    'a line that is not a trace line',
    line(30.0, 'step 0: worker 0 run_cfg computed in 5.000 ms'),
    line(30.05, 'step 0: worker 1 run_cfg computed in 5.000 ms'),
    line(35.25, 'step 1: worker 1 next_cfg computed in 5.000 ms'),
    line(35.1, 'step 1: worker 0 next_cfg computed in 4.800 ms'),
]


class BusiestWorkerOverhead(unittest.TestCase):
    def test_a_log_written_by_hand(self):
        found = trace_hops.busiest_worker_overhead(HAND_LOG, 0)
        self.assertEqual(found['steps'], 3)
        self.assertAlmostEqual(found['median'], 0.2, places=3)
        self.assertAlmostEqual(found['p10'], 0.1, places=3)
        self.assertAlmostEqual(found['p90'], 0.3, places=3)
        skipped = trace_hops.busiest_worker_overhead(HAND_LOG, 1)  # image 1's step 1 left out
        self.assertEqual(skipped['steps'], 2)
        self.assertAlmostEqual(skipped['median'], 0.15, places=3)

    def test_a_log_without_worker_lines_has_none(self):
        self.assertIsNone(trace_hops.busiest_worker_overhead([line(1.0, 'step 0: 2 request(s) out')], 0))

    def test_the_trace_of_a_real_run(self):
        # Mode cfg on two workers of one process: a warm-up image and one timed image of 6 steps, so 2 × 5 steps
        # follow a computed step; 3 are skipped.
        with tempfile.TemporaryDirectory() as folder:
            log = os.path.join(folder, 'trace.log')
            with open(log, 'w') as out:
                subprocess.run([BINARY, 'bench', '--model-config', os.path.join(FIXTURES, 'tiny-sdxl', 'unet'),
                                '--scheduler-config', os.path.join(FIXTURES, 'tiny-sdxl', 'scheduler'),
                                '--device', 'cpu', '--size', '32', '--steps', '6', '--warmup', '1',
                                '--run', 'cfg --workers 2', '--log-level', 'trace'],
                               stdout=out, stderr=subprocess.STDOUT, timeout=300, check=True,
                               env=dict(os.environ, OMP_NUM_THREADS='1'))
            result = subprocess.run([sys.executable, TOOL, log, '--skip-steps', '3'], capture_output=True, text=True,
                                    timeout=60, check=True)
        overhead = json.loads(result.stdout)['busiest_worker_overhead_ms']
        self.assertIsNotNone(overhead, 'no worker lines with their step in the trace')
        self.assertEqual(overhead['steps'], 2 * 5 - 3)
        self.assertLessEqual(overhead['p10'], overhead['median'])
        self.assertLessEqual(overhead['median'], overhead['p90'])


if __name__ == '__main__':
    BINARY, FIXTURES = sys.argv[1], sys.argv[2]
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:])
