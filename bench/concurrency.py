"""With 50 ms of latency on every BILL call: achieved versus ideal throughput under BILL's
cap of 3 requests in flight (target ≥ 90 %). Ideal = BILL calls × latency / 3.

usage: python bench/concurrency.py [N] [LATENCY]
"""

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import prepare  # noqa: E402

n = int(sys.argv[1]) if len(sys.argv) > 1 else 600
latency = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05

fb, bill, path, env = prepare(n, latency=latency, vendors=10)
try:
    # vendors first, so that the bills flow is measured alone
    subprocess.run([sys.executable, "-m", "mlconnector", "--config", str(path), "sync",
                    "freshbooks-bill", "--flow", "vendors"], env=env, capture_output=True)
    t = time.perf_counter()
    calls0 = len(bill.request_log)
    done = subprocess.run([sys.executable, "-m", "mlconnector", "--config", str(path), "sync",
                           "freshbooks-bill", "--flow", "bills", "--json"], env=env,
                          capture_output=True, text=True)
    assert done.stdout, done.stderr
    flow_seconds = json.loads(done.stdout)[0]["flows"]["bills"]["seconds"]
    elapsed = time.perf_counter() - t
    calls = len(bill.request_log) - calls0
    assert len(bill.bills) == n, done.stdout + done.stderr
finally:
    fb.stop()
    bill.stop()
ideal = calls * latency / 3
print(f"concurrency: {calls} BILL calls at {latency * 1000:.0f} ms, 3 in flight: the bills "
      f"flow took {flow_seconds:.2f} s vs ideal {ideal:.2f} s = {100 * ideal / flow_seconds:.0f} "
      f"% of ideal ({100 * ideal / elapsed:.0f} % counting process start-up, {elapsed:.2f} s); "
      f"most in flight seen by BILL: {bill.max_in_flight_seen}")
