"""Set-up shared by tests: a labelled day for the stages after labelling; a fake clock for the online judge."""

import asyncio

from flywheel.settings import configure_environment


def labelled_day(config: str, date: str):
    """The session home with the golden set seeded, the judge of ``config`` calibrated, and ``date``'s candidates
    retrieved and labelled: (paths, cfg, calibration summary). For tests of the stages after labelling."""
    from flywheel.config import load_config
    from flywheel.data.golden import seed_golden
    from flywheel.data.lake import open_lake as lake
    from flywheel.judge.calibrate import calibrate
    from flywheel.labeling import daily as labeling
    from flywheel.labeling.candidates import retrieve_candidates

    paths = configure_environment()
    cfg = load_config(config)
    seed_golden(cfg.resolve(cfg.golden), lake(paths))
    cal = calibrate(cfg, paths)
    retrieve_candidates(date, cfg, paths)
    labeling.label_candidates(date, cal, cfg, paths)
    return paths, cfg, cal


class FakeClock:
    """Stands in for ``time`` and ``asyncio`` inside flywheel.judge.online (``use_fake_clock``): ``sleep`` records
    the wait and moves the clock instead of waiting, so rate limits and back-off are checked exactly and at once.
    With one request in flight the waits add up as they would in real time. More than ``max_sleeps`` waits means
    something spins on waits too small to move the clock, and fails at once."""

    def __init__(self, start: float = 1000.0, max_sleeps: int = 10_000):
        self.now, self.sleeps, self.max_sleeps = start, [], max_sleeps

    def monotonic(self):
        return self.now

    def perf_counter(self):
        return self.now

    async def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
        assert len(self.sleeps) <= self.max_sleeps, f"spinning: waits of {self.sleeps[-3:]} s do not move the clock"
        await asyncio.sleep(0)

    def __getattr__(self, name):                  # everything else: the real asyncio
        return getattr(asyncio, name)


def use_fake_clock(monkeypatch, clock: FakeClock) -> FakeClock:
    import flywheel.judge.online as online

    monkeypatch.setattr(online, "time", clock)
    monkeypatch.setattr(online, "asyncio", clock)
    return clock


def wait_ready(client, timeout: float = 120.0) -> dict:
    """Poll a scoring service's /ready (a TestClient or anything with ``get``) until a model is loaded and warm."""
    import time

    deadline = time.time() + timeout
    while True:
        r = client.get("/ready")
        if r.status_code == 200:
            return r.json()
        assert time.time() < deadline, f"service not ready after {timeout}s: {r.text}"
        time.sleep(0.1)
