"""When a nats-server with a failed store write should be restarted."""

from __future__ import annotations

from trainmaster.nats_health import MIN_FREE_BYTES, StoreSpace, restart_clears_store_error, write_error_of

MB = 1024 * 1024
FULL_DISK = ('{"status":"unavailable","error":"JetStream stream \'$G \\u003e KV_tm_jobs\' write error: '
             'write /data/jetstream/$G/streams/KV_tm_jobs/msgs/1.blk: no space left on device"}')


def test_the_write_error_is_read_from_the_health_reply() -> None:
    assert write_error_of(FULL_DISK) == ("JetStream stream '$G > KV_tm_jobs' write error: write "
                                         "/data/jetstream/$G/streams/KV_tm_jobs/msgs/1.blk: no space left on device")


def test_other_health_problems_are_no_write_error() -> None:
    assert write_error_of('{"status":"unavailable","error":"JetStream not enabled"}') is None
    assert write_error_of('{"status":"ok"}') is None
    assert write_error_of("<html>not json</html>") is None
    assert write_error_of("[1, 2]") is None


def test_a_write_error_with_room_again_is_cleared_by_a_restart() -> None:
    error = write_error_of(FULL_DISK)
    assert restart_clears_store_error(error, StoreSpace(free_bytes=60 * MB, total_bytes=64 * MB))


def test_no_restart_while_the_disk_is_still_full_or_without_an_error() -> None:
    error = write_error_of(FULL_DISK)
    assert not restart_clears_store_error(error, StoreSpace(free_bytes=100 * 1024, total_bytes=64 * MB))
    # 5 % of a large disk: 1 GB free of 100 GB is not enough
    assert not restart_clears_store_error(error, StoreSpace(free_bytes=1000 * MB, total_bytes=100_000 * MB))
    assert restart_clears_store_error(error, StoreSpace(free_bytes=6000 * MB, total_bytes=100_000 * MB))
    assert not restart_clears_store_error(None, StoreSpace(free_bytes=60 * MB, total_bytes=64 * MB))
    assert not restart_clears_store_error(error, StoreSpace(free_bytes=MIN_FREE_BYTES - 1, total_bytes=10 * MB))
