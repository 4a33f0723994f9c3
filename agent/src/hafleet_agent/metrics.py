"""Host sampling, smoothed: Linux's /proc read directly, psutil elsewhere.

:func:`sample` takes one reading of the host; a :class:`Sampler` takes them in a row, turns
network counters into rates and smooths the noisy gauges with an EWMA; :func:`run_sampler`
runs a sampler on the event loop every ``interval`` seconds until told to stop.

Where the numbers come from is a :class:`MetricsSource` (psutil-like): :func:`host_source`
gives :class:`ProcSource` on Linux (the files psutil reads, kept open and read with one
``pread`` each, the same figures: 0.3-0.4 ms of CPU a sample where psutil took 0.7, taken
every second on every member) and :class:`PsutilSource` elsewhere or when /proc cannot be
read. Tests hand in a fake source and a fake clock.

Fields of :class:`HostMetrics`:

==================  ============================================================================
field               meaning
==================  ============================================================================
``timestamp``       the (monotonic) clock reading the sample was taken at, seconds
``cpu_count``       logical CPUs
``cpu_percent``     CPU use over all cores since the previous reading, 0..100
                    (as ``psutil.cpu_percent(interval=None)``: guest time is in user time,
                    idle and iowait are not busy)
``load1/5/15``      load averages (``os.getloadavg``): runnable + uninterruptible tasks
``mem_total``       bytes of RAM
``mem_available``   bytes available to new work without swapping (``MemAvailable``)
``mem_percent``     100 * (total - available) / total
``swap_percent``    swap in use, 0..100 (0 without swap)
``disk_percent``    use of the file system holding the data dir, 0..100 (None: no data dir)
``disk_free``       free bytes on that file system (None: no data dir)
``net_sent_rate``   bytes/s sent over all interfaces since the previous reading (None: first)
``net_recv_rate``   bytes/s received, likewise
``process_rss``     resident memory of the agent process, bytes
``uptime``          seconds since the host booted
==================  ============================================================================
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol

log = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.3
"""EWMA weight of the newest sample: with one sample a second, a step change is 90% through
after about 6.5 s (``log(0.1) / log(1 - 0.3)``)."""

SMOOTHED_FIELDS = (
    "cpu_percent",
    "mem_available",
    "mem_percent",
    "swap_percent",
    "net_sent_rate",
    "net_recv_rate",
)
"""The gauges the :class:`Sampler` smooths. Load averages are already exponentially damped
by the kernel; counts, totals, disk, RSS and uptime move slowly or not at all."""

_INT_FIELDS = frozenset({"cpu_count", "mem_total", "mem_available", "disk_free", "process_rss"})
_OPTIONAL_FIELDS = frozenset({"disk_percent", "disk_free", "net_sent_rate", "net_recv_rate"})


@dataclass(frozen=True, slots=True)
class HostMetrics:
    timestamp: float
    cpu_count: int
    cpu_percent: float
    load1: float
    load5: float
    load15: float
    mem_total: int
    mem_available: int
    mem_percent: float
    swap_percent: float
    disk_percent: float | None
    disk_free: int | None
    net_sent_rate: float | None
    net_recv_rate: float | None
    process_rss: int
    uptime: float

    def to_dict(self) -> dict[str, float | int | None]:
        """A JSON-ready dict; floats rounded to 3 decimals."""
        out: dict[str, float | int | None] = {}
        for name in _NAMES:
            value = getattr(self, name)
            out[name] = round(value, 3) if type(value) is float else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostMetrics:
        """Parse a report from another agent. Unknown keys are ignored (a newer agent may
        send more); a missing or ill-typed field raises ValueError."""
        if not isinstance(data, dict):
            raise ValueError("metrics must be an object")
        values: list[Any] = []
        for name in _NAMES:
            value = data.get(name, _MISSING)
            kind = type(value)
            if kind is float or kind is int:
                if not (0 <= value <= _MAX):  # NaN, inf and ints past a float too
                    raise ValueError(f"metrics field {name!r} must be finite and >= 0")
                if name in _INT_FIELDS:
                    if value != int(value):
                        raise ValueError(f"metrics field {name!r} must be an integer")
                    value = int(value)
                else:
                    value = float(value)
            elif value is None and name in _OPTIONAL_FIELDS:
                pass
            elif value is _MISSING:
                raise ValueError(f"metrics lack {name!r}")
            else:  # a bool, a string, a subclass of a number: refused
                raise ValueError(f"metrics field {name!r} must be a number")
            values.append(value)
        m = cls(*values)
        if m.cpu_count < 1:
            raise ValueError("cpu_count must be at least 1")
        return m


#: The fields in order (``dataclasses.fields`` builds its tuple at every call: the leader
#: parses and writes each member's report every second).
_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HostMetrics))
_MISSING = object()
_MAX = sys.float_info.max


class MetricsSource(Protocol):
    """What a sampler reads: psutil's names and shapes (named tuples with the attributes
    used here), plus the two readings psutil has no module-level function for."""

    def cpu_count(self) -> int | None: ...

    def cpu_percent(self, interval: float | None = None) -> float: ...

    def getloadavg(self) -> tuple[float, float, float]: ...

    def virtual_memory(self) -> Any: ...  # .total, .available

    def swap_memory(self) -> Any: ...  # .percent

    def disk_usage(self, path: str) -> Any: ...  # .percent, .free

    def net_io_counters(self) -> Any: ...  # .bytes_sent, .bytes_recv

    def process_rss(self) -> int: ...

    def uptime(self) -> float: ...


class PsutilSource:
    """The host, through psutil (imported here: on Linux it is not loaded at all)."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self._boot = psutil.boot_time()  # read from /proc/stat at each call: it does not move
        # cpu_percent(interval=None) compares with the previous call; the first call has
        # nothing to compare with and returns 0.0. Prime it so the first sample means something.
        psutil.cpu_percent(interval=None)

    def cpu_count(self) -> int | None:
        return self._psutil.cpu_count(logical=True)

    def cpu_percent(self, interval: float | None = None) -> float:
        return self._psutil.cpu_percent(interval=interval)

    def getloadavg(self) -> tuple[float, float, float]:
        return os.getloadavg()

    def virtual_memory(self) -> Any:
        return self._psutil.virtual_memory()

    def swap_memory(self) -> Any:
        return self._psutil.swap_memory()

    def disk_usage(self, path: str) -> Any:
        return self._psutil.disk_usage(path)

    def net_io_counters(self) -> Any:
        return self._psutil.net_io_counters(pernic=False)

    def process_rss(self) -> int:
        return int(self._process.memory_info().rss)

    def uptime(self) -> float:
        return max(0.0, time.time() - self._boot)


_PROC_FILES = ("/proc/meminfo", "/proc/stat", "/proc/net/dev", "/proc/self/statm")


class ProcSource:
    """The host, from the files of Linux's /proc that psutil reads, with psutil's arithmetic.

    The files are opened once and read with one ``pread`` each (a /proc file is generated
    afresh at offset 0): psutil opens, reads and parses each file in Python at every call,
    the same file twice for memory and swap and /proc/vmstat besides (for swap-in counts the
    agent does not use); here a sample reads /proc/meminfo once for both. The descriptors stay
    open for the agent's life; a file that cannot be opened raises OSError (``host_source``
    then falls back to psutil)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._swap_read: dict[bytes, int] | None = None
        try:
            for name in _PROC_FILES:
                self._fds[name] = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
            self._page = os.sysconf("SC_PAGE_SIZE")
            meminfo = self._meminfo()
            for key in (b"MemTotal", b"MemAvailable"):  # (MemAvailable: Linux 3.14 on)
                if not meminfo.get(key):
                    raise OSError(f"/proc/meminfo has no {key.decode()}")
            self._boot = self._boot_time()
            self._cpu = self._cpu_times()
            self._cpus = os.cpu_count()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    def _pread(self, name: str, size: int = 65536) -> bytes:
        return os.pread(self._fds[name], size, 0)

    def _meminfo(self) -> dict[bytes, int]:
        out: dict[bytes, int] = {}
        for line in self._pread("/proc/meminfo").split(b"\n"):
            key, _, rest = line.partition(b":")
            if key in _MEMINFO_KEYS:
                out[key] = int(rest.split()[0]) * 1024  # (kB)
        return out

    def _boot_time(self) -> float:
        for line in self._pread("/proc/stat").split(b"\n"):
            if line.startswith(b"btime "):
                return float(line.split()[1])
        raise OSError("/proc/stat has no btime")

    def _cpu_times(self) -> tuple[int, int]:
        """(total, busy) clock ticks of all CPUs, as psutil counts them: guest time is in
        user time already, idle and iowait are not busy."""
        head = self._pread("/proc/stat", 4096)
        ticks = [int(x) for x in head[: head.index(b"\n")].split()[1:]]
        total = sum(ticks) - sum(ticks[8:10])
        return total, total - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)

    def cpu_count(self) -> int | None:
        """The online CPUs; the last count when they cannot be read (the C library opens
        a /sys file: with the descriptors used up it would say nothing)."""
        self._cpus = os.cpu_count() or self._cpus
        return self._cpus

    def cpu_percent(self, interval: float | None = None) -> float:
        """The use since the previous call (``interval`` must be None: no blocking)."""
        if interval is not None:
            raise ValueError("ProcSource.cpu_percent compares with its previous call only")
        (total, busy), (total0, busy0) = self._cpu_times(), self._cpu
        self._cpu = (total, busy)
        if busy <= busy0 or total <= total0:
            return 0.0
        return round(100.0 * (busy - busy0) / (total - total0), 1)

    def getloadavg(self) -> tuple[float, float, float]:
        return os.getloadavg()

    def virtual_memory(self) -> SimpleNamespace:
        m = self._meminfo()
        self._swap_read = m  # a sample asks for the swap next: the same read serves it
        # (0 is a kernel's bug, psutil issue 1915: the free memory then, a low estimate)
        return SimpleNamespace(total=m[b"MemTotal"], available=m[b"MemAvailable"] or m[b"MemFree"])

    def swap_memory(self) -> SimpleNamespace:
        """From the read of the ``virtual_memory`` call just before (once: a sample's two
        figures from one read of /proc/meminfo), else a read of its own."""
        m, self._swap_read = self._swap_read or self._meminfo(), None
        total = m.get(b"SwapTotal", 0)
        used = total - m.get(b"SwapFree", 0)
        return SimpleNamespace(percent=round(100.0 * used / total, 1) if total > 0 else 0.0)

    def disk_usage(self, path: str) -> SimpleNamespace:
        st = os.statvfs(path)
        free = st.f_bavail * st.f_frsize
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        total_user = used + free  # what psutil divides by: the root-reserved blocks left out
        percent = round(100.0 * used / total_user, 1) if total_user > 0 else 0.0
        return SimpleNamespace(percent=percent, free=free)

    def net_io_counters(self) -> SimpleNamespace:
        sent = recv = 0
        for line in self._pread("/proc/net/dev").split(b"\n")[2:]:
            fields = line.partition(b":")[2].split()
            if len(fields) >= 9:
                recv += int(fields[0])
                sent += int(fields[8])
        return SimpleNamespace(bytes_sent=sent, bytes_recv=recv)

    def process_rss(self) -> int:
        return int(self._pread("/proc/self/statm").split()[1]) * self._page

    def uptime(self) -> float:
        return max(0.0, time.time() - self._boot)


_MEMINFO_KEYS = frozenset({b"MemTotal", b"MemFree", b"MemAvailable", b"SwapTotal", b"SwapFree"})


def host_source() -> MetricsSource:
    """This host's readings: :class:`ProcSource` on Linux, :class:`PsutilSource` elsewhere
    or when /proc cannot be read as it expects (logged once)."""
    if sys.platform.startswith("linux"):
        try:
            return ProcSource()
        except (OSError, ValueError, IndexError) as exc:
            log.info("reading /proc directly failed (%s): sampling through psutil", exc)
    return PsutilSource()


@dataclass(frozen=True, slots=True)
class _Reading:
    metrics: HostMetrics
    net_sent: int
    net_recv: int


def _read(source: MetricsSource, now: float, data_dir: str | None) -> _Reading:
    vm = source.virtual_memory()
    total, available = int(vm.total), int(vm.available)
    mem_percent = 100.0 * (total - available) / total if total > 0 else 0.0
    try:
        swap_percent = float(source.swap_memory().percent)
    except OSError:  # no /proc/swaps in some containers
        swap_percent = 0.0
    disk_percent: float | None = None
    disk_free: int | None = None
    if data_dir is not None:
        try:
            du = source.disk_usage(data_dir)
            disk_percent, disk_free = float(du.percent), int(du.free)
        except OSError as e:
            log.debug("disk usage of %s: %s", data_dir, e)
    net = source.net_io_counters()
    load1, load5, load15 = source.getloadavg()
    metrics = HostMetrics(
        timestamp=now,
        cpu_count=max(1, int(source.cpu_count() or 1)),
        cpu_percent=min(100.0, max(0.0, float(source.cpu_percent(interval=None)))),
        load1=float(load1),
        load5=float(load5),
        load15=float(load15),
        mem_total=total,
        mem_available=available,
        mem_percent=mem_percent,
        swap_percent=swap_percent,
        disk_percent=disk_percent,
        disk_free=disk_free,
        net_sent_rate=None,
        net_recv_rate=None,
        process_rss=int(source.process_rss()),
        uptime=float(source.uptime()),
    )
    return _Reading(metrics, int(net.bytes_sent), int(net.bytes_recv))


def sample(
    data_dir: str | None = None,
    *,
    source: MetricsSource | None = None,
    now: float | None = None,
) -> HostMetrics:
    """One reading of the host, unsmoothed; no network rates (they need two readings).
    ``now`` defaults to ``time.monotonic()``. ``cpu_percent`` is the use since the source's
    previous reading (a fresh source primes it at creation)."""
    src = source if source is not None else host_source()
    return _read(src, time.monotonic() if now is None else now, data_dir).metrics


def ewma(previous: float | None, value: float, alpha: float) -> float:
    """``alpha * value + (1 - alpha) * previous``; the first value passes through."""
    return value if previous is None else alpha * value + (1.0 - alpha) * previous


class Sampler:
    """Takes readings in a row: network counters become rates, and the gauges in
    :data:`SMOOTHED_FIELDS` are smoothed with an EWMA of weight ``alpha`` (1: no smoothing).

    ``source`` defaults to :func:`host_source`'s; ``clock`` (monotonic seconds) to
    ``time.monotonic``."""

    def __init__(
        self,
        source: MetricsSource | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        alpha: float = DEFAULT_ALPHA,
        data_dir: str | None = None,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.source: MetricsSource = source if source is not None else host_source()
        self.clock = clock
        self.alpha = alpha
        self.data_dir = data_dir
        self.raw: HostMetrics | None = None
        """The latest reading as taken (with rates), before smoothing."""
        self.smoothed: HostMetrics | None = None
        """The latest smoothed metrics: what :meth:`sample` returned last."""
        self._prev: _Reading | None = None

    def sample(self) -> HostMetrics:
        """Take a reading and return the smoothed metrics."""
        reading = _read(self.source, self.clock(), self.data_dir)
        m = reading.metrics
        sent_rate = recv_rate = None
        if self._prev is not None:
            dt = m.timestamp - self._prev.metrics.timestamp
            d_sent = reading.net_sent - self._prev.net_sent
            d_recv = reading.net_recv - self._prev.net_recv
            # A counter that went back (an interface removed, a reset) gives no rate this time.
            if dt > 0 and d_sent >= 0 and d_recv >= 0:
                sent_rate, recv_rate = d_sent / dt, d_recv / dt
        self._prev = reading
        raw = dataclasses.replace(m, net_sent_rate=sent_rate, net_recv_rate=recv_rate)
        self.raw = raw
        self.smoothed = self._smooth(self.smoothed, raw)
        return self.smoothed

    def _smooth(self, prev: HostMetrics | None, raw: HostMetrics) -> HostMetrics:
        if prev is None:
            return raw
        changes: dict[str, float | int | None] = {}
        for name in SMOOTHED_FIELDS:
            value = getattr(raw, name)
            old = getattr(prev, name)
            if value is None:  # no rate this time: keep the smoothed one
                changes[name] = old
                continue
            smoothed = ewma(old, value, self.alpha)
            changes[name] = round(smoothed) if name in _INT_FIELDS else smoothed
        return dataclasses.replace(raw, **changes)


OnSample = Callable[[HostMetrics], Awaitable[None] | None]


async def run_sampler(
    sampler: Sampler,
    interval: float,
    on_sample: OnSample,
    stop_event: asyncio.Event,
    *,
    max_rounds: int | None = None,
) -> int:
    """Sample every ``interval`` seconds and hand each result to ``on_sample`` (a function or
    a coroutine function) until ``stop_event`` is set, ``max_rounds`` rounds have run, or the
    task is cancelled. A failing sample or callback is logged and the loop goes on. Returns
    the number of samples taken (rounds whose sample did not fail).

    Rounds keep to the schedule of the loop's clock; when a round overruns, the missed ticks
    are skipped rather than bunched."""
    if interval < 0:
        raise ValueError("interval must be >= 0")
    loop = asyncio.get_running_loop()
    taken = rounds = 0
    next_at = loop.time()
    while not stop_event.is_set() and (max_rounds is None or rounds < max_rounds):
        rounds += 1
        try:
            metrics = sampler.sample()
        except Exception:  # psutil errors must not stop the agent's sampling
            log.exception("sampling the host failed")
        else:
            taken += 1
            try:
                result = on_sample(metrics)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("handling a host sample failed")
        if max_rounds is not None and rounds >= max_rounds:
            break
        next_at += interval
        now = loop.time()
        if next_at < now:  # overran: the next tick of the schedule that is still ahead
            next_at = (
                now if interval == 0 else next_at + interval * math.ceil((now - next_at) / interval)
            )
        try:
            await asyncio.wait_for(stop_event.wait(), timeout=max(0.0, next_at - now))
        except TimeoutError:
            pass
    return taken
