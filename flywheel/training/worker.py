"""One rank of a torchrun job written by :mod:`flywheel.training.launch`: ``python -m flywheel.training.worker JOB``.

Reads ``JOB/job.json`` (target function, its arguments, the config), joins the process group, calls the target on
this rank and, on rank 0, writes its result to ``JOB/result.json`` atomically. A failure writes this rank's
traceback to ``JOB/error-rank<r>.txt`` (the launcher reports it) and exits non-zero, which stops every rank.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path


def main(job: Path) -> None:
    from torch.distributed.elastic.multiprocessing.errors import record

    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)   # torchrun prefixes the rank
    rank = int(os.environ.get("RANK", "0"))
    (job / f"rank{rank}.pid").write_text(str(os.getpid()))

    @record
    def _run():
        spec = json.loads((job / "job.json").read_text())
        from flywheel.config import FlywheelConfig
        from flywheel.settings import configure_environment
        from flywheel.training.launch import resolve

        paths = configure_environment(spec["home"])
        if spec.get("lake"):            # the job's lake (FLYWHEEL_LAKE on the stack), not <home>/lake
            paths = dataclasses.replace(paths, lake_dir=Path(spec["lake"]))
        cfg = FlywheelConfig.model_validate(spec["config"])
        out = resolve(spec["target"])(**spec["kwargs"], cfg=cfg, paths=paths)
        if rank == 0:
            tmp = job / f".result.json.tmp-{os.getpid()}"
            tmp.write_text(json.dumps(out, default=str))
            os.replace(tmp, job / "result.json")

    try:
        _run()
    except BaseException:
        (job / f"error-rank{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
