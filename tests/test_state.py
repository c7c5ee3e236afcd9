from datetime import UTC, datetime

import pytest

from mlconnector.errors import LockHeld
from mlconnector.state import State

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.fixture
def state(tmp_path):
    s = State(tmp_path / "state.db")
    yield s
    s.close()


def test_id_map_and_parking_are_one_story(state):
    run = state.start_run("p", NOW)
    pid, new = state.park("p", "bills", "7", kind="held", reason="GL missing",
                          payload={"record": {"id": 7}}, transient=False, run_id=run, now=NOW)
    assert new and state.parked_by_id(pid).reason == "GL missing"
    again, new = state.park("p", "bills", "7", kind="held", reason="GL missing",
                            payload={}, transient=False, run_id=run, now=NOW)
    assert again == pid and not new  # the same reason again is no new alarm
    state.record_synced("p", "bills", "7", "00n1", "v1", "h1", NOW)
    assert state.parked("p") == []
    assert state.mapped("p", "bills", "7").target_id == "00n1"
    assert state.mapped_by_target("p", "bills", "00n1").source_id == "7"


def test_watermarks_and_runs(state):
    state.set_watermark("p", "bills", "2026-01-01T00:00:00Z", NOW)
    state.set_watermark("p", "bills", "2026-01-02T00:00:00Z", NOW)
    assert state.watermark("p", "bills") == "2026-01-02T00:00:00Z"
    run = state.start_run("p", NOW)
    state.finish_run(run, NOW, 0, {"flows": {}})
    assert state.last_run("p")["exit_code"] == 0


def test_second_lock_on_a_pair_is_refused(state):
    with state.lock("p"):
        with pytest.raises(LockHeld):
            with state.lock("p"):
                pass
        with state.lock("other"):
            pass
    with state.lock("p"):
        pass
