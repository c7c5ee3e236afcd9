"""`mlconnector --help` start-up time (target ≤ 0.15 s). Prints the median of 15 runs."""

import shutil
import statistics
import subprocess
import sys
import time

exe = shutil.which("mlconnector") or None
cmd = [exe, "--help"] if exe else [sys.executable, "-m", "mlconnector", "--help"]
subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache
times = []
for _ in range(15):
    t = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True)
    times.append(time.perf_counter() - t)
print(f"startup: median {statistics.median(times):.3f} s, min {min(times):.3f} s "
      f"({' '.join(cmd[-2:])})")
