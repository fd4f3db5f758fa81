"""Set-up shared by tests of the stages after labelling."""

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
