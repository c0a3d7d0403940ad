"""Run-time statistics of the node (ROS-free): windows, counters and the warning throttle."""

import pytest

from seg_perception.diagnostics import (NodeStats, stamp_age, statistics_line, Throttle,
                                        WindowStats)


def test_window_rate_counts_only_recent_events():
    w = WindowStats(window_s=2.0, start=0.0)
    for t in (0.5, 1.0, 1.5, 2.0):
        w.add(t)
    assert w.rate(2.0) == pytest.approx(4 / 2.0)
    assert w.rate(3.2) == pytest.approx(2 / 2.0)  # 0.5 and 1.0 fell out of (1.2, 3.2]
    assert w.rate(10.0) == 0.0


def test_window_rate_before_the_window_has_filled():
    w = WindowStats(window_s=10.0, start=100.0)
    w.add(100.5)
    w.add(101.0)
    assert w.rate(102.0) == pytest.approx(2 / 2.0)


def test_window_percentiles_of_recent_values():
    w = WindowStats(window_s=5.0)
    for i in range(1, 101):
        w.add(1.0, i / 1000.0)
    w.add(1.0)  # an event without a value counts for the rate only
    assert w.percentile(50, 2.0) == pytest.approx(0.0505)
    assert w.percentile(99, 2.0) == pytest.approx(0.09901)
    assert w.percentile(50, 7.0) is None


def test_node_stats_count_each_drop_kind_per_camera():
    stats = NodeStats(['/front/image', '/rear/image'], now=0.0, window_s=5.0)
    for _ in range(3):
        stats.received('/front/image', 0.5)
    stats.received('/rear/image', 0.5)
    stats.overwritten('/front/image', 0.5)
    stats.malformed('/rear/image', now=1.0)
    stats.skipped('/front/image')
    stats.forward(1.0, 0.02, 2, {'labels': 2, 'color': 0, 'overlay': 2, 'confidence': 0})
    stats.published('/front/image', 1.0, 0.050)
    stats.published('/front/image', 1.5, 0.070)
    front = stats.camera_values('/front/image', 2.0)
    rear = stats.camera_values('/rear/image', 2.0)
    assert (front['frames_received'], front['frames_processed']) == ('3', '2')
    assert (front['dropped_overwritten'], front['dropped_malformed']) == ('1', '0')
    assert front['skipped_no_subscribers'] == '1'
    assert (rear['dropped_overwritten'], rear['dropped_malformed']) == ('0', '1')
    assert float(front['latency_p50_ms']) == pytest.approx(60.0)
    assert rear['latency_p50_ms'] == 'n/a'
    assert float(front['fps']) == pytest.approx(2 / 2.0)
    assert stats.recent_malformed('/rear/image', 2.0)
    assert not stats.recent_malformed('/rear/image', 7.0)
    assert not stats.recent_malformed('/front/image', 2.0)
    totals = stats.totals(2.0)
    assert (totals['frames_received'], totals['dropped_overwritten'],
            totals['dropped_malformed']) == ('4', '1', '1')
    assert (totals['batches'], totals['batch_size_max']) == ('1', '2')
    assert (totals['computed_labels'], totals['computed_color']) == ('2', '0')
    assert float(totals['inference_p50_ms']) == pytest.approx(20.0)


def test_throttle_lets_one_message_per_key_and_period_through():
    t = Throttle(period_s=5.0)
    assert t.allow('a', 0.0) == (True, 0)
    assert t.allow('a', 1.0) == (False, 0)
    assert t.allow('a', 2.0) == (False, 0)
    assert t.allow('b', 2.0) == (True, 0)  # another problem is reported at once
    assert t.allow('a', 5.5) == (True, 2)  # with the count of those held back
    assert t.allow('a', 6.0) == (False, 0)


def test_throttle_forgets_quiet_keys():
    t = Throttle(period_s=1.0)
    for i in range(Throttle.MAX_KEYS):
        t.allow(i, 0.0)
    t.allow('new', 10.0)
    assert len(t._last) == 1
    assert t.allow(0, 10.5) == (True, 0)


def test_failed_frames_are_counted_apart_and_in_the_statistics_line():
    stats = NodeStats(['/front/image', '/rear/image'], now=0.0)
    for _ in range(4):
        stats.received('/front/image', 0.5)
    stats.skipped('/front/image')
    stats.overwritten('/front/image', 0.5)
    stats.malformed('/front/image', now=0.5)
    stats.failed('/front/image')
    stats.failed('/front/image')
    stats.published('/front/image', 1.0, 0.02)
    front = stats.camera_values('/front/image', 2.0)
    assert front['dropped_failed'] == '2'
    assert stats.totals(2.0)['dropped_failed'] == '2'
    assert stats.camera_values('/rear/image', 2.0)['dropped_failed'] == '0'
    line = statistics_line(front)
    assert line.startswith('/front/image: 0.50 fps, latency p50 20.0 ms p99 20.0 ms, ')
    assert ('received 4, processed 1, skipped 1 (no subscribers), dropped 1 overwritten / '
            '1 malformed / 2 failed') in line


@pytest.mark.parametrize('sec,nanosec,age', [
    (100, 0, 0.5), (100, 400_000_000, 0.1), (-5, 0, 105.5), (-2**31, 0, 100.5 + 2**31),
    (2**31 - 1, 999_999_999, 100.5 - 2**31), (99, 999_999_999, 0.500000001)])
def test_stamp_age_takes_any_stamp(sec, nanosec, age):
    assert stamp_age(sec, nanosec, 100_500_000_000) == pytest.approx(age, rel=1e-12, abs=1e-9)


def test_stamp_age_of_an_unset_stamp_is_none():
    assert stamp_age(0, 0, 100_500_000_000) is None


def _camera_at(stats, topic, fps, keep, start, end):
    """Record frames at ``fps`` from ``start`` to ``end``; all but every keep-th replaced."""
    n = round((end - start) * fps)
    for i in range(n):
        t = start + i / fps
        stats.received(topic, t)
        if i % keep:
            stats.overwritten(topic, t)


def test_a_camera_faster_than_the_node_is_outpaced_with_both_rates():
    stats = NodeStats(['/cam/image'], now=0.0, window_s=5.0)
    _camera_at(stats, '/cam/image', fps=20.0, keep=4, start=1.0, end=9.0)
    camera, node = stats.outpaced('/cam/image', 9.0)
    assert camera == pytest.approx(20.0, rel=0.05)
    assert node == pytest.approx(5.0, rel=0.1)


@pytest.mark.parametrize('fps,taken_every,now', [
    (20.0, 1, 9.0),    # every frame taken: the node keeps up
    (20.0, 20, 2.0),   # under half a window of frames: too early to tell
    (1.0, 2, 9.0),     # too few frames in the window to tell
    (20.0, 4, 30.0)])  # the camera stopped: nothing in the window
def test_no_outpacing_without_evidence(fps, taken_every, now):
    stats = NodeStats(['/cam/image'], now=0.0, window_s=5.0)
    _camera_at(stats, '/cam/image', fps, taken_every, start=1.0, end=min(now, 9.0))
    assert stats.outpaced('/cam/image', now) is None
