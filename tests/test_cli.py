"""The commands as cron and a person run them: exit codes, no tracebacks, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from typer.testing import CliRunner

from mlconnector.cli import app

from .test_freshbooks_bill import seed

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, list(args))


def test_malformed_config_exits_2_before_any_request(business):
    seed(business)
    path = business.write_config()
    path.write_text(path.read_text().replace("organization_id", "organisation_id"))
    result = cli("--config", str(path), "sync", "freshbooks-bill")
    assert result.exit_code == 2
    assert "organisation_id" in result.output and "Traceback" not in result.output
    assert business.fb.request_log == [] and business.bill.request_log == []


def test_unknown_pair_and_missing_file_exit_2(business, tmp_path):
    path = business.write_config()
    assert cli("--config", str(path), "sync", "nope").exit_code == 2
    assert cli("--config", str(tmp_path / "missing.toml"), "sync", "--all").exit_code == 2


def test_a_second_run_while_one_holds_the_lock_exits_75(business):
    from mlconnector.state import State

    path = business.write_config()
    state = State(business.data_dir / "state.db")
    with state.lock("freshbooks-bill"):
        result = cli("--config", str(path), "sync", "freshbooks-bill")
    state.close()
    assert result.exit_code == 75
    assert business.bill.request_log == []


def test_sync_prints_plain_summary_and_json(business):
    seed(business)
    path = business.write_config()
    plain = cli("--config", str(path), "sync", "freshbooks-bill")
    assert plain.exit_code == 0, plain.output
    assert "bills: read=3 created=3" in plain.output
    js = cli("--config", str(path), "sync", "freshbooks-bill", "--json")
    assert js.exit_code == 0 and '"unchanged": 3' in js.output
    assert cli("--config", str(path), "status").exit_code == 0
    check = cli("--config", str(path), "config", "check")
    assert check.exit_code == 0 and "flow bills" in check.output


def test_held_record_lists_in_failures_and_replays_by_id(business):
    vendor, _ = seed(business, bills=1)
    travel = business.category("Travel", mapped=False)
    business.fb.add_bill(vendor["vendorid"], bill_number="T-1", lines=[
        {"categoryid": travel, "description": "taxi", "quantity": 1, "unit_cost": "12.00"}])
    path = business.write_config()
    first = cli("--config", str(path), "sync", "freshbooks-bill")
    assert first.exit_code == 4 and "Travel" in first.output
    listing = cli("--config", str(path), "failures")
    parked_id = listing.output.split("\t")[0]
    business.gl["Travel"] = business.bill.add_chart_of_account("Travel")["id"]
    path = business.write_config()
    replayed = cli("--config", str(path), "replay", parked_id)
    assert replayed.exit_code == 0, replayed.output
    trail = cli("--config", str(path), "audit", "--event", "record.written")
    assert '"action": "created"' in trail.output


def _wait_for(predicate, deadline=60.0):
    stop = time.monotonic() + deadline
    tick = threading.Event()
    while not predicate():
        assert time.monotonic() < stop, "timed out"
        tick.wait(0.005)


def test_sigkill_mid_sync_then_rerun_leaves_no_duplicate_and_no_gap(business):
    from mlconnector.sandbox import BillSandbox, Knobs

    vendor, _ = seed(business, bills=0)
    office = business.gl["Office Expenses & Postage"]
    assert office
    for i in range(40):
        business.fb.add_bill(vendor["vendorid"], bill_number=f"K-{i}", lines=[
            {"categoryid": business.fb.categories and next(iter(business.fb.categories)),
             "description": "x", "quantity": 1, "unit_cost": "1.00"}])
    # a slow BILL so the kill lands mid-run
    business.bill.knobs.latency = 0.01
    path = business.write_config()
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "mlconnector", "--config", str(path), "sync",
           "freshbooks-bill"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(lambda: len(business.bill.bills) >= 10)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(business.bill.bills) < 40
    business.bill.knobs.latency = 0.0
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    numbers = [b["invoice"]["invoiceNumber"] for b in business.bill.bills.values()]
    assert sorted(numbers) == sorted(f"K-{i}" for i in range(40))
    assert BillSandbox and Knobs
