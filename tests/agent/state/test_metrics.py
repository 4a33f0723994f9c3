"""Host sampling: readings from a fake source, rates, EWMA smoothing, the async loop."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from types import SimpleNamespace
from typing import Any

import pytest

import hafleet_agent.metrics as metrics_mod
from hafleet_agent.metrics import (
    SMOOTHED_FIELDS,
    HostMetrics,
    ProcSource,
    PsutilSource,
    Sampler,
    ewma,
    host_source,
    run_sampler,
    sample,
)

GiB = 1 << 30


class FakeSource:
    """A psutil-like source whose readings the test sets."""

    def __init__(self) -> None:
        self.cpus: int | None = 4
        self.cpu = 25.0
        self.load = (1.0, 0.5, 0.25)
        self.total = 8 * GiB
        self.available = 6 * GiB
        self.swap: float | Exception = 10.0
        self.disk: dict[str, Any] = {"/data": SimpleNamespace(percent=40.0, free=60 * GiB)}
        self.sent = 1000
        self.recv = 5000
        self.rss = 50_000_000
        self.up = 3600.0

    def cpu_count(self) -> int | None:
        return self.cpus

    def cpu_percent(self, interval: float | None = None) -> float:
        assert interval is None
        return self.cpu

    def getloadavg(self) -> tuple[float, float, float]:
        return self.load

    def virtual_memory(self) -> Any:
        return SimpleNamespace(total=self.total, available=self.available)

    def swap_memory(self) -> Any:
        if isinstance(self.swap, Exception):
            raise self.swap
        return SimpleNamespace(percent=self.swap)

    def disk_usage(self, path: str) -> Any:
        if path not in self.disk:
            raise FileNotFoundError(path)
        return self.disk[path]

    def net_io_counters(self) -> Any:
        return SimpleNamespace(bytes_sent=self.sent, bytes_recv=self.recv)

    def process_rss(self) -> int:
        return self.rss

    def uptime(self) -> float:
        return self.up


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_sample_maps_every_field() -> None:
    src = FakeSource()
    m = sample("/data", source=src, now=12.5)
    assert m == HostMetrics(
        timestamp=12.5,
        cpu_count=4,
        cpu_percent=25.0,
        load1=1.0,
        load5=0.5,
        load15=0.25,
        mem_total=8 * GiB,
        mem_available=6 * GiB,
        mem_percent=25.0,
        swap_percent=10.0,
        disk_percent=40.0,
        disk_free=60 * GiB,
        net_sent_rate=None,
        net_recv_rate=None,
        process_rss=50_000_000,
        uptime=3600.0,
    )


def test_sample_copes_with_odd_hosts() -> None:
    src = FakeSource()
    src.cpus = None  # psutil: "undetermined"
    src.cpu = 100.4  # rounding noise above 100
    src.swap = OSError("no /proc/swaps")
    m = sample("/missing", source=src, now=0.0)
    assert (m.cpu_count, m.cpu_percent, m.swap_percent) == (1, 100.0, 0.0)
    assert (m.disk_percent, m.disk_free) == (None, None)
    assert sample(None, source=src, now=0.0).disk_percent is None


def test_sampler_rates_and_ewma() -> None:
    src, clock = FakeSource(), FakeClock(100.0)
    s = Sampler(src, clock=clock, alpha=0.5, data_dir="/data")
    first = s.sample()
    assert (first.net_sent_rate, first.net_recv_rate, first.cpu_percent) == (None, None, 25.0)
    clock.now, src.sent, src.recv = 102.0, 3000, 5000
    src.cpu, src.available, src.load = 75.0, 4 * GiB, (3.0, 2.0, 1.0)
    second = s.sample()
    assert s.raw is not None
    assert (s.raw.net_sent_rate, s.raw.net_recv_rate, s.raw.cpu_percent) == (1000.0, 0.0, 75.0)
    # The first rate has nothing to average with; the gauges average 50/50.
    assert second.net_sent_rate == 1000.0
    assert second.cpu_percent == 50.0
    assert second.mem_available == 5 * GiB
    assert second.mem_percent == 37.5  # (25 + 50) / 2
    assert second.load1 == 3.0  # not smoothed: the kernel already damps it
    assert second.timestamp == 102.0
    clock.now, src.sent, src.cpu = 103.0, 3500, 0.0
    third = s.sample()
    assert third.net_sent_rate == 750.0  # (500 + 1000) / 2
    assert third.cpu_percent == 25.0
    assert s.smoothed is third


def test_sampler_counter_reset_keeps_the_smoothed_rate() -> None:
    src, clock = FakeSource(), FakeClock()
    s = Sampler(src, clock=clock, alpha=0.5)
    s.sample()
    clock.now += 1
    src.sent += 400
    assert s.sample().net_sent_rate == 400.0
    clock.now += 1
    src.sent = 10  # an interface went away
    m = s.sample()
    assert s.raw is not None and s.raw.net_sent_rate is None
    assert m.net_sent_rate == 400.0
    clock.now += 0  # no time passed: no rate either
    src.sent = 20
    assert s.sample().net_sent_rate == 400.0


def test_alpha_one_is_no_smoothing_and_alpha_is_checked() -> None:
    src, clock = FakeSource(), FakeClock()
    s = Sampler(src, clock=clock, alpha=1.0)
    s.sample()
    src.cpu = 90.0
    clock.now += 1
    assert s.sample().cpu_percent == 90.0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            Sampler(src, clock=clock, alpha=bad)
    assert ewma(None, 3.0, 0.2) == 3.0
    assert ewma(10.0, 0.0, 0.2) == pytest.approx(8.0)
    assert set(SMOOTHED_FIELDS) <= {f for f in HostMetrics.__dataclass_fields__}


def test_to_dict_from_dict_round_trip() -> None:
    src, clock = FakeSource(), FakeClock()
    s = Sampler(src, clock=clock, data_dir="/data")
    s.sample()
    clock.now += 3
    src.sent += 1000
    m = s.sample()
    d = m.to_dict()
    assert d["net_sent_rate"] == 333.333  # rounded for the wire
    again = HostMetrics.from_dict({**d, "from_the_future": 1})
    assert again.to_dict() == d
    assert isinstance(again.mem_total, int) and isinstance(again.cpu_percent, float)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"cpu_count": None}, "number"),
        ({"cpu_count": 0}, "at least 1"),
        ({"mem_total": 1.5}, "integer"),
        ({"cpu_percent": float("nan")}, "finite"),
        ({"cpu_percent": float("inf")}, "finite"),
        ({"mem_total": 10**400}, "finite"),  # past a float: refused, not an OverflowError
        ({"load1": -1}, ">= 0"),
        ({"uptime": True}, "number"),
        ({"uptime": "1"}, "number"),
    ],
)
def test_from_dict_refuses_bad_reports(change: dict[str, Any], words: str) -> None:
    d = sample("/data", source=FakeSource(), now=1.0).to_dict()
    with pytest.raises(ValueError, match=words):
        HostMetrics.from_dict({**d, **change})
    del d["uptime"]
    with pytest.raises(ValueError, match="lack"):
        HostMetrics.from_dict(d)


@pytest.mark.parametrize("source", [ProcSource, PsutilSource])
def test_the_real_host(tmp_path: Any, source: Any) -> None:
    s = Sampler(source(), data_dir=str(tmp_path))
    first = s.sample()
    m = s.sample()
    assert m.timestamp >= first.timestamp
    assert m.cpu_count >= 1
    assert 0.0 <= m.cpu_percent <= 100.0
    assert min(m.load1, m.load5, m.load15) >= 0.0
    assert 0 < m.mem_available <= m.mem_total
    assert 0.0 <= m.mem_percent <= 100.0 and 0.0 <= m.swap_percent <= 100.0
    assert m.disk_percent is not None and 0.0 <= m.disk_percent <= 100.0
    assert m.process_rss > 0 and m.uptime > 0
    assert HostMetrics.from_dict(m.to_dict()).cpu_count == m.cpu_count


# ---- run_sampler -----------------------------------------------------------------------------


def _run(coro: Any) -> Any:
    # The bound only keeps a broken loop from hanging the suite; nothing asserts on time.
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_run_sampler_rounds_and_async_callbacks() -> None:
    src, clock = FakeSource(), FakeClock()
    got: list[HostMetrics] = []

    async def on_sample(m: HostMetrics) -> None:
        got.append(m)
        clock.now += 1
        src.cpu = 0.0

    s = Sampler(src, clock=clock, alpha=0.5)
    taken = _run(run_sampler(s, 0, on_sample, asyncio.Event(), max_rounds=3))
    assert taken == 3
    assert [m.cpu_percent for m in got] == [25.0, 12.5, 6.25]


def test_run_sampler_stops_when_the_event_is_set() -> None:
    src = FakeSource()
    calls: list[float] = []

    async def main() -> int:
        stop = asyncio.Event()

        def on_sample(m: HostMetrics) -> None:
            calls.append(m.cpu_percent)
            if len(calls) == 2:
                stop.set()

        return await run_sampler(Sampler(src, clock=FakeClock()), 0.0, on_sample, stop)

    assert _run(main()) == 2
    assert len(calls) == 2


def test_run_sampler_wakes_from_its_wait_on_stop() -> None:
    async def main() -> int:
        stop = asyncio.Event()
        sampled = asyncio.Event()
        task = asyncio.create_task(
            run_sampler(
                Sampler(FakeSource(), clock=FakeClock()), 3600.0, lambda m: sampled.set(), stop
            )
        )
        await sampled.wait()
        stop.set()
        return await task

    assert _run(main()) == 1


def test_run_sampler_is_cancellable() -> None:
    async def main() -> bool:
        sampled = asyncio.Event()
        task = asyncio.create_task(
            run_sampler(
                Sampler(FakeSource(), clock=FakeClock()),
                3600.0,
                lambda m: sampled.set(),
                asyncio.Event(),
            )
        )
        await sampled.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert _run(main()) is True


def test_run_sampler_survives_failures(caplog: pytest.LogCaptureFixture) -> None:
    src = FakeSource()
    seen: list[int] = []

    class Flaky(Sampler):
        def sample(self) -> HostMetrics:
            if len(seen) == 1 and not getattr(self, "failed", False):
                self.failed = True
                raise RuntimeError("psutil blew up")
            return super().sample()

    def on_sample(m: HostMetrics) -> None:
        seen.append(1)
        if len(seen) == 3:
            raise ValueError("callback blew up")

    with caplog.at_level(logging.ERROR, logger="hafleet_agent.metrics"):
        taken = _run(
            run_sampler(Flaky(src, clock=FakeClock()), 0, on_sample, asyncio.Event(), max_rounds=5)
        )
    assert (taken, len(seen)) == (4, 4)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["sampling the host failed", "handling a host sample failed"]


def test_run_sampler_checks_its_arguments() -> None:
    with pytest.raises(ValueError):
        _run(run_sampler(Sampler(FakeSource(), clock=FakeClock()), -1, print, asyncio.Event()))
    stop = asyncio.Event()
    stop.set()
    calls: list[HostMetrics] = []
    assert _run(run_sampler(Sampler(FakeSource(), clock=FakeClock()), 1, calls.append, stop)) == 0
    assert calls == []


def test_proc_reads_what_psutil_reads(tmp_path: Any) -> None:
    """The same host through both sources: the figures that do not move between two calls
    are equal, the counters and gauges that do are close, and nothing but the first reads
    differ in kind."""
    import psutil

    proc, ps = ProcSource(), PsutilSource()
    assert proc.cpu_count() == ps.cpu_count()
    assert proc.virtual_memory().total == ps.virtual_memory().total
    assert abs(proc.virtual_memory().available - ps.virtual_memory().available) < 64 << 20
    assert proc.swap_memory().percent == pytest.approx(ps.swap_memory().percent, abs=0.5)
    d1, d2 = proc.disk_usage(str(tmp_path)), ps.disk_usage(str(tmp_path))
    assert d1.percent == pytest.approx(d2.percent, abs=0.5)
    assert abs(d1.free - d2.free) < 256 << 20
    n1, n2 = proc.net_io_counters(), ps.net_io_counters()
    assert 0 <= n2.bytes_sent - n1.bytes_sent < 64 << 20
    assert 0 <= n2.bytes_recv - n1.bytes_recv < 64 << 20
    assert abs(proc.process_rss() - ps.process_rss()) < 8 << 20
    assert proc.uptime() == pytest.approx(time.time() - psutil.boot_time(), abs=2.0)
    assert proc.getloadavg() == pytest.approx(ps.getloadavg(), abs=0.5)
    sum(i * i for i in range(200_000))  # some CPU use to see
    assert 0.0 <= proc.cpu_percent() <= 100.0
    with pytest.raises(ValueError, match="previous call"):
        proc.cpu_percent(interval=0.1)


def test_proc_reads_meminfo_once_a_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sample's memory and swap come from one read of /proc/meminfo; a swap reading that
    does not follow a memory reading reads the file itself (never an old read)."""
    src = ProcSource()
    reads: list[str] = []
    pread = src._pread

    def counted(name: str, size: int = 65536) -> bytes:
        reads.append(name)
        return pread(name, size)

    monkeypatch.setattr(src, "_pread", counted)
    Sampler(src, data_dir="/").sample()
    assert reads.count("/proc/meminfo") == 1
    reads.clear()
    src.swap_memory()
    src.swap_memory()
    assert reads.count("/proc/meminfo") == 2
    fake = iter([b"MemTotal: 4 kB\nMemAvailable: 2 kB\nSwapTotal: 100 kB\nSwapFree: 25 kB\n"])
    monkeypatch.setattr(src, "_pread", lambda name, size=65536: next(fake))
    assert src.virtual_memory().total == 4096 and src.swap_memory().percent == 75.0


def test_proc_cpu_percent_is_psutils_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """user nice system idle iowait irq softirq steal guest guest_nice: guest time is in
    user time already (not counted twice), idle and iowait are not busy."""
    src = ProcSource()
    lines = iter(
        [
            b"cpu  100 0 100 700 100 0 0 0 50 0\ncpu0 1 2 3\n",
            b"cpu  200 0 150 800 150 0 0 0 90 0\ncpu0 1 2 3\n",
            b"cpu  200 0 150 900 150 0 0 0 90 0\n",
            b"cpu  100 0 100 950 150 0 0 0 90 0\n",  # went back: 0, not negative
        ]
    )
    monkeypatch.setattr(src, "_pread", lambda name, size=65536: next(lines))
    src._cpu = src._cpu_times()
    # total 1000 -> 1300 (the guest time left out), busy 200 -> 350: 150 / 300
    assert src.cpu_percent() == 50.0
    assert src.cpu_percent() == 0.0  # only idle moved
    assert src.cpu_percent() == 0.0


def test_proc_keeps_its_files_open_and_reads_with_descriptors_used_up() -> None:
    """With no descriptor left, psutil's sampler fails (it opens a file at every call); the
    files of a ProcSource were opened at its start, and the CPU count (the C library opens a
    /sys file for it) keeps its last value."""
    import resource

    s = Sampler(ProcSource(), data_dir="/")
    cpus = s.sample().cpu_count
    psutil_source = PsutilSource()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    # a low limit for this test, so that using the descriptors up takes a few dozen
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 32, hard))
    try:
        for _ in range(4096):  # bounded; the limit above is reached long before
            try:
                held.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        else:
            pytest.fail("the descriptors were not used up")
        with pytest.raises(OSError):
            psutil_source.virtual_memory()
        m = s.sample()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert m.cpu_count == cpus and m.mem_total > 0 and m.process_rss > 0


def test_without_proc_the_host_is_read_through_psutil(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(host_source(), ProcSource)
    monkeypatch.setattr(metrics_mod, "_PROC_FILES", ("/proc/meminfo", "/proc/no-such-file"))
    with caplog.at_level(logging.INFO, logger="hafleet_agent.metrics"):
        src = host_source()
    assert isinstance(src, PsutilSource)
    assert "sampling through psutil" in caplog.text and "no-such-file" in caplog.text
    assert sample(None, source=src).mem_total > 0
    # a kernel before 3.14: no MemAvailable (psutil estimates it)
    monkeypatch.undo()
    monkeypatch.setattr(ProcSource, "_meminfo", lambda self: {b"MemTotal": 1 << 30})
    with caplog.at_level(logging.INFO, logger="hafleet_agent.metrics"):
        assert isinstance(host_source(), PsutilSource)
    assert "/proc/meminfo has no MemAvailable" in caplog.text
