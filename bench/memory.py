"""Peak memory (max RSS) of `mlconnector sync` at 10k versus 100k bills (target ≤ 1.2×).
The emulators run in this process; the sync in a child whose peak RSS is measured.
The child reads its own VmHWM: getrusage's ru_maxrss would report this (large) parent's
size at fork time, which grows with the number of seeded bills.

usage: python bench/memory.py [SMALL] [LARGE]
"""

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import prepare  # noqa: E402


def peak_rss_mb(n: int) -> float:
    fb, bill, path, env = prepare(n)
    try:
        code = ("import runpy, sys\n"
                f"sys.argv = ['mlconnector', '--config', {str(path)!r}, 'sync', "
                "'freshbooks-bill']\n"
                "try:\n    runpy.run_module('mlconnector', run_name='__main__')\n"
                "except SystemExit:\n    pass\n"
                "print([line.split()[1] for line in open('/proc/self/status')\n"
                "       if line.startswith('VmHWM')][0], file=sys.stderr)")
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True)
        assert len(bill.bills) == n, done.stdout + done.stderr
        return int(done.stderr.strip().splitlines()[-1]) / 1024
    finally:
        fb.stop()
        bill.stop()


small = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
large = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
a, b = peak_rss_mb(small), peak_rss_mb(large)
print(f"memory: peak RSS {a:.1f} MB at {small} bills, {b:.1f} MB at {large}: ratio {b / a:.2f}×")
