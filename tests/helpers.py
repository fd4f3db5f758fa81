"""Set-up shared by tests of the stages after labelling."""

from flywheel.settings import configure_environment


def labelled_day(config: str, date: str):
    """The session home with the golden set seeded, the judge of ``config`` calibrated, and ``date``'s candidates
    retrieved and labelled: (paths, cfg, calibration summary). For tests of the stages after labelling."""
    from flywheel import labeling
    from flywheel.calibrate import calibrate
    from flywheel.config import load_config
    from flywheel.context import lake
    from flywheel.ingest import seed_golden

    paths = configure_environment()
    cfg = load_config(config)
    seed_golden(cfg.resolve(cfg.golden), lake(paths))
    cal = calibrate(cfg, paths)
    labeling.retrieve_candidates(date, cfg, paths)
    labeling.label_candidates(date, cal, cfg, paths)
    return paths, cfg, cal
