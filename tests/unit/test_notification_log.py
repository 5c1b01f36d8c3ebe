"""The notification log: the one side effect outside Redis, made exactly-once by refusing a second line per id."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from notification_service.notification_log import NotificationLog, read_notifications


def line_for(notification_id: str, message: str = "hello") -> dict:
    return {"notification_id": notification_id, "message": message}


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "notifications.log"


@pytest.fixture
def log(path: Path):
    log = NotificationLog(path)
    yield log
    log.close()


def test_a_notification_is_written_as_one_json_line(log: NotificationLog, path: Path):
    assert log.send("n1", line_for("n1")) is True
    assert path.read_bytes() == b'{"notification_id":"n1","message":"hello"}\n'
    assert read_notifications(path) == [line_for("n1")]


def test_a_second_line_for_the_same_id_is_refused(log: NotificationLog, path: Path):
    log.send("n1", line_for("n1"))
    assert log.send("n1", line_for("n1", "again")) is False
    assert read_notifications(path) == [line_for("n1")]


def test_different_ids_each_get_their_line(log: NotificationLog, path: Path):
    assert log.send("n1", line_for("n1")) and log.send("n2", line_for("n2"))
    assert [line["notification_id"] for line in read_notifications(path)] == ["n1", "n2"]


def test_a_second_log_on_the_same_file_refuses_an_id_it_finds_there(log: NotificationLog, path: Path):
    log.send("n1", line_for("n1"))

    other = NotificationLog(path)
    try:
        assert other.send("n1", line_for("n1", "from another worker")) is False
    finally:
        other.close()
    assert read_notifications(path) == [line_for("n1")]


def test_a_log_opened_before_another_wrote_still_refuses_the_id(path: Path):
    first, second = NotificationLog(path), NotificationLog(path)
    try:
        assert first.send("n1", line_for("n1")) is True
        assert second.send("n1", line_for("n1")) is False
        assert second.send("n2", line_for("n2")) is True
        assert first.send("n2", line_for("n2")) is False
    finally:
        first.close()
        second.close()
    assert [line["notification_id"] for line in read_notifications(path)] == ["n1", "n2"]


def test_a_restarted_worker_remembers_what_the_log_holds(path: Path):
    before = NotificationLog(path)
    before.send("n1", line_for("n1"))
    before.close()

    after = NotificationLog(path)
    try:
        assert after.send("n1", line_for("n1")) is False
    finally:
        after.close()


@pytest.mark.parametrize("complete_lines", [0, 2], ids=["torn line alone", "torn line after complete ones"])
def test_a_torn_last_line_is_tolerated(path: Path, complete_lines: int):
    """A crash mid-write leaves half a line. It holds no notification (the write never finished), so its id may be
    written again, on a line of its own that every reader can parse."""
    path.parent.mkdir(parents=True)
    earlier = [line_for(f"old{i}") for i in range(complete_lines)]
    whole = b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in earlier)
    path.write_bytes(whole + b'{"notification_id":"n1","mess')

    log = NotificationLog(path)
    try:
        assert log.send("n1", line_for("n1")) is True
        assert log.send("n1", line_for("n1")) is False
        for old in earlier:
            assert log.send(old["notification_id"], old) is False
    finally:
        log.close()

    assert read_notifications(path) == [*earlier, line_for("n1")]
    reopened = NotificationLog(path)
    try:
        assert reopened.send("n1", line_for("n1")) is False
    finally:
        reopened.close()


def test_concurrent_writers_on_one_file_write_each_id_once(path: Path):
    logs = [NotificationLog(path) for _ in range(3)]
    ids = [f"n{i}" for i in range(20)]
    written: list[bool] = []
    lock = threading.Lock()

    def send_all(log: NotificationLog) -> None:
        for notification_id in ids:
            outcome = log.send(notification_id, line_for(notification_id))
            with lock:
                written.append(outcome)

    threads = [threading.Thread(target=send_all, args=(log,)) for log in logs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for log in logs:
        log.close()

    assert not any(thread.is_alive() for thread in threads)
    assert written.count(True) == len(ids)
    assert sorted(line["notification_id"] for line in read_notifications(path)) == sorted(ids)


def test_following_the_log_reads_each_complete_line_once_and_waits_for_a_line_still_being_written(tmp_path) -> None:
    from notification_service.notification_log import read_notifications_from

    path = tmp_path / "notifications.log"
    path.write_bytes(b'{"notification_id": "a"}\n{"notification_id": "b"}\n{"notification_id": "c"')
    lines, offset = read_notifications_from(path, 0)
    assert [line["notification_id"] for line in lines] == ["a", "b"]

    with open(path, "ab") as log_file:
        log_file.write(b'}\n{"notification_id": "d"}\n')
    lines, offset = read_notifications_from(path, offset)
    assert [line["notification_id"] for line in lines] == ["c", "d"]
    assert read_notifications_from(path, offset) == ([], offset)


def test_the_log_remembers_a_bounded_number_of_recent_ids(path: Path):
    """The memory bound: the last `remember` ids are refused again; an older one is no longer known to the log (the
    service's own store refuses it once committed), and a restart reads only the tail that holds the recent ones."""
    log = NotificationLog(path, remember=3)
    try:
        for n in range(5):
            assert log.send(f"n{n}", line_for(f"n{n}")) is True
        assert [log.send(f"n{n}", line_for(f"n{n}")) for n in (2, 3, 4)] == [False, False, False]
        assert len(log._known) == 3
        assert log.send("n0", line_for("n0", "long after")) is True
    finally:
        log.close()

    restarted = NotificationLog(path, remember=3)
    try:
        assert restarted.send("n4", line_for("n4")) is False
        assert len(restarted._known) <= 3
    finally:
        restarted.close()


def test_a_restart_reads_the_tail_of_a_long_log_not_the_whole_file(path: Path):
    path.parent.mkdir(parents=True)
    lines = [line_for(f"old{i}", "x" * 100) for i in range(5000)]
    path.write_bytes(b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines))
    log = NotificationLog(path, remember=10)
    try:
        assert log.send("old4999", line_for("old4999")) is False  # the newest lines are known
        assert len(log._known) == 10
        assert log._read_up_to == path.stat().st_size
    finally:
        log.close()
