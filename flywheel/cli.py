"""The ``flywheel`` command line. Run ``flywheel --help``; every command works from the repository root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from flywheel.settings import REPO_ROOT, configure_environment

app = typer.Typer(help="LLM relevance data flywheel: policy -> calibrated judge -> daily labels -> distilled "
                       "rankers -> scoring service. State lives under $FLYWHEEL_HOME (default .flywheel/).",
                  no_args_is_help=True, pretty_exceptions_enable=False)
import_app = typer.Typer(help="Bring your own data into the lake.", no_args_is_help=True)
policy_app = typer.Typer(help="Grading policies: check before they go live.", no_args_is_help=True)
golden_app = typer.Typer(help="The bundled golden set.", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(policy_app, name="policy")
app.add_typer(golden_app, name="golden")


@app.command()
def run(config: str = typer.Option("configs/demo.yaml", help="flywheel config (see configs/)"),
        date: Optional[str] = typer.Option(None, help="run date YYYY-MM-DD (default today)"),
        keep_serving: bool = typer.Option(False, help="leave the scoring service running afterwards")):
    """Run the daily flywheel flow once (what `make demo` does)."""
    args = [sys.executable, "-m", "flows.daily", "--config", config] + (["--date", date] if date else []) \
        + (["--keep-serving"] if keep_serving else [])
    raise typer.Exit(subprocess.call(args, cwd=REPO_ROOT))


@app.command()
def calibrate(config: str = typer.Option("configs/demo.yaml", help="flywheel config: its judge and policy"),
              output: Optional[Path] = typer.Option(None, help="also write the full summary as JSON here")):
    """Calibrate the configured judge on the golden set and apply the gate (exit code 3 when it blocks)."""
    paths = configure_environment()
    from flywheel.config import load_config
    from flywheel.data.golden import seed_golden
    from flywheel.data.lake import open_lake as lake
    from flywheel.evaluation.report import calibration_text
    from flywheel.judge.calibrate import calibrate as _calibrate

    cfg = load_config(config)
    seed_golden(cfg.resolve(cfg.golden), lake(paths))
    summary = _calibrate(cfg, paths)
    typer.echo(calibration_text(summary))
    if output:
        output.write_text(json.dumps(summary, indent=2, default=str))
    raise typer.Exit(0 if summary["gate"]["passed"] else 3)


@app.command()
def plan(config: str = typer.Option("configs/production.yaml", help="flywheel config: its ladder"),
         gpus: Optional[int] = typer.Option(None, help="GPUs each ddp/fsdp rung trains on (default: its launch "
                                                        "nproc_per_node x nnodes; strategy single always uses one)"),
         gpu_memory_gb: float = typer.Option(80.0, help="memory of one GPU, GiB"),
         tflops: float = typer.Option(989.0, help="peak TFLOP/s of one GPU (989: H100 SXM, bf16 dense)"),
         mfu: float = typer.Option(0.4, help="model FLOP utilisation assumed of that peak"),
         pairs: int = typer.Option(100_000, help="training pairs per epoch, for the time estimate")):
    """Will each rung fit? Prints, per rung, its parameters (total and trainable), the memory per GPU of weights,
    gradients, AdamW state and activations under its strategy, precision, LoRA and gradient checkpointing, the
    tokens per optimizer step and an estimated time per epoch from TFLOP/s x MFU; then the assumptions.
    Nothing is downloaded: shapes come from known checkpoints or a local config.json. Exit code 3 when a rung
    does not fit, with the setting to change (formulas: flywheel/training/plan.py)."""
    from rich.console import Console
    from rich.table import Table

    from flywheel.config import load_config
    from flywheel.training import plan as pl

    try:
        plans = pl.plan_ladder(load_config(config), gpus, gpu_memory_gb, tflops, mfu, pairs)
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2)
    table = Table(title=f"{config}: memory per device and time per epoch")
    for col in ("rung", "checkpoint", "params", "trainable", "strategy / precision / lora", "GPUs", "weights",
                "grads", "optimizer", "activations", "total / GPU", "fits", "tokens / step", "time / epoch"):
        table.add_column(col, justify="left" if col in ("rung", "checkpoint", "strategy / precision / lora")
                         else "right")
    gib = "{:.2f} GiB".format
    for p in plans:
        setup = f"{p.strategy} / {p.precision} / " + (f"r={p.lora_r}" if p.lora_r else "full") \
            + (" / ckpt" if p.gradient_checkpointing else "") + f" / micro {p.micro_batch}"
        table.add_row(p.rung, p.checkpoint, pl.format_count(p.params), pl.format_count(p.trainable), setup,
                      str(p.world) if p.device == "gpu" else "cpu", gib(p.weights_gib), gib(p.grads_gib),
                      gib(p.optimizer_gib), gib(p.activations_gib), gib(p.total_gib),
                      ("yes" if p.fits else "NO") if p.device == "gpu" else "RAM", f"{p.tokens_per_step:,}",
                      _duration(p.seconds_per_epoch))
    Console(width=None if sys.stdout.isatty() else 220).print(table)
    typer.echo(f"Assumptions: {gpu_memory_gb:g} GiB a GPU; {pairs:,} pairs an epoch, each padded to max_length; "
               f"{tflops:g} TFLOP/s x MFU {mfu:g}; 6N FLOPs a token (4N with LoRA, +2N with checkpointing), N "
               f"without embeddings; fp32 weights (a LoRA base too) + autocast's 16-bit copies; fp32 gradients (twice "
               f"under ddp: its buckets) and AdamW moments of trainable parameters; / W under fsdp, + 2 gathered "
               f"fp32 layers; activations per Korthikanti et al. 2022 with flash attention; total = sum x "
               f"{1 + pl.FRAGMENTATION:g} + "
               f"{pl.OVERHEAD_GIB:g} GiB. device: cpu rungs are host RAM and not checked.")
    refused = [p.advice for p in plans if not p.fits]
    for advice in refused:
        typer.secho(advice, fg="red", err=True)
    raise typer.Exit(3 if refused else 0)


@app.command()
def join(follow: bool = typer.Option(False, help="keep joining each new job (every rung of the ladder, and the "
                                                 "retries of a failed one) until --idle-timeout passes with none"),
         idle_timeout: float = typer.Option(3600.0, help="seconds to wait for a job to join"),
         since: Optional[float] = typer.Option(None, help="join only jobs launched after this epoch time (default: "
                                                          "in the last 10 minutes; older ones have timed out)")):
    """Run this machine's share of a multi-node rung. Node 0 runs the flow (or its Prefect deployment); its train
    tasks write each rung's job to FLYWHEEL_HOME/jobs (which every machine must share) and start torchrun with
    launch.nnodes nodes meeting at launch.rdzv_endpoint. On every other machine, `flywheel join --follow` waits
    for those jobs and starts the same torchrun command, so the ranks meet; a failed job's retry is joined too.
    Exit code: torchrun's (without --follow), 0 after --follow's idle timeout when it joined any, else 1."""
    import time

    from flywheel.training.launch import join as join_job
    from flywheel.training.launch import pending_jobs

    paths, joined, waited, failed = configure_environment(), set(), time.time(), 0
    after = time.time() - 600 if since is None else since
    while True:
        jobs = [jt for jt in pending_jobs(paths, after) if jt not in joined]
        if not jobs:
            if time.time() - waited > idle_timeout:
                typer.echo(f"no multi-node job to join under {paths.home / 'jobs'} for {idle_timeout:g} s")
                raise typer.Exit(0 if joined and not failed else 1)
            time.sleep(1.0)
            continue
        rc = join_job(jobs[0][0], typer.echo)
        joined.add(jobs[0])
        if not follow:
            raise typer.Exit(rc)
        failed = rc
        waited = time.time()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h"


@import_app.command("beir")
def import_beir(directory: Path = typer.Argument(..., help="folder with corpus.jsonl, queries.jsonl, qrels/*.tsv"),
                name: Optional[str] = typer.Option(None, help="dataset name used to prefix ids (default: folder name)"),
                negatives: str = typer.Option("auto", help="assumed negatives from unjudged candidates: auto (only "
                                                           "for positive-only qrels), always or never"),
                negatives_per_query: int = typer.Option(20, help="assumed negatives per golden query")):
    """Import a BEIR-layout dataset into the queries, documents and golden_labels tables.

    Positive-only qrels also get assumed grade-0 labels (rater_id "assumed:unjudged") from each query's unjudged
    first-stage candidates; see flywheel/retrieval/negatives.py. Nothing is written if either step fails.
    """
    from flywheel.data.beir import BeirFormatError, read_beir
    from flywheel.data.beir import import_beir as _import
    from flywheel.data.lake import Lake
    from flywheel.retrieval.negatives import ASSUMED_RATER, add_assumed_negatives

    if negatives not in ("auto", "always", "never"):
        typer.secho(f"error: --negatives must be auto, always or never, got {negatives!r}", fg="red", err=True)
        raise typer.Exit(2)
    paths = configure_environment()
    lake = Lake(paths.lake)
    try:
        tables, stats = add_assumed_negatives(read_beir(directory, name), negatives_per_query, mode=negatives)
        counts = _import(directory, lake, name, tables=tables)
    except (BeirFormatError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2)
    lab = tables["golden_labels"]
    counts["golden_labels"] = int((lab.rater_id != ASSUMED_RATER).sum())
    typer.echo(json.dumps(counts | {"assumed_negatives": stats["assumed_negatives"]}))


@policy_app.command("check")
def policy_check(file: Path):
    """Validate a policy file; every mistake is reported with its line and how to fix it."""
    from flywheel.judge.policy import PolicyError, load_policy

    try:
        p = load_policy(file)
    except PolicyError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1)
    except FileNotFoundError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(f"{file}: ok — policy {p.name} version {p.version}: {len(p.scale)} grades, "
               f"{len(p.dimensions)} dimensions, {len(p.examples)} examples")


@policy_app.command("diff")
def policy_diff(old: Path, new: Path,
                config: str = typer.Option("configs/demo.yaml", help="whose judge previews the change"),
                show: int = typer.Option(20, help="how many changed pairs to list")):
    """Impact preview: judge the golden set under both policies; agreement before/after, every grade change."""
    paths = configure_environment()
    from flywheel.config import load_config
    from flywheel.data.golden import seed_golden
    from flywheel.data.lake import open_lake as lake
    from flywheel.judge.policy_diff import policy_impact

    cfg = load_config(config)
    seed_golden(cfg.resolve(cfg.golden), lake(paths))
    r = policy_impact(old, new, cfg, paths)
    typer.echo("What changed:\n  " + "\n  ".join(r["changes"]))
    typer.echo(f"judge versions: {r['judge_versions']['old']} -> {r['judge_versions']['new']}")
    typer.echo(f"{'agreement':22s} {'QWK':>6s} {'exact':>6s} {'±1':>6s} {'n':>5s}")
    for k, m in r["agreement"].items():
        typer.echo(f"{k:22s} {m['qwk']:6.3f} {m['exact']:6.3f} {m['within_one']:6.3f} {m['n']:5d}")
    typer.echo(f"gate: old {'passes' if r['gate']['old']['passed'] else 'BLOCKS'}, "
               f"new {'passes' if r['gate']['new']['passed'] else 'BLOCKS'}")
    typer.echo(f"{len(r['changed_pairs'])} golden pair(s) change grade" + (":" if r["changed_pairs"] else ""))
    for c in r["changed_pairs"][:show]:
        typer.echo(f"  [{c['split']}] {c['query']!r} / {c['title'][:50]!r}: {c['old']} -> {c['new']} "
                   f"(humans {c['human']:.2f})")


@golden_app.command("build")
def golden_build(source: Path = typer.Argument(REPO_ROOT.parent / "shared" / "datasets" / "socrata_arcs"),
                 out: Path = typer.Option(REPO_ROOT / "golden_data" / "socrata")):
    """Rebuild golden_data/socrata from the Socrata ARCS judgments (writes stats.json beside it)."""
    from flywheel.data.golden import build_socrata_golden

    typer.echo(json.dumps(build_socrata_golden(source, out), indent=2))


@golden_app.command("avature")
def golden_avature(source: Path = typer.Argument(REPO_ROOT.parent / "shared" / "datasets" / "avature_job_titles"),
                   out: Path = typer.Option(REPO_ROOT / "golden_data" / "avature_beir"),
                   negatives: int = typer.Option(20, help="judged negatives per query, the highest-BM25 titles")):
    """Export the Avature job-title set (Apache-2.0) in the BEIR layout: positives + hard judged negatives,
    queries split into dev (calibration) and test; then `flywheel import beir OUT` or bench/quality.py."""
    from flywheel.data.avature import to_beir

    typer.echo(json.dumps(to_beir(source, out, negatives), indent=2))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def serve(ctx: typer.Context):
    """Serve models:/<model>@<alias> over HTTP (POST /score, /v1/rerank, /reload; GET /health, /ready, /metrics).
    Run `flywheel serve --help` for the options (port, device, dtype, batching, several GPUs)."""
    from flywheel.serving.launch import main

    raise typer.Exit(main(ctx.args))


@app.command()
def rollback(model: str = "flywheel-ranker"):
    """Point the champion alias back at the previous champion."""
    from flywheel.serving.registry import rollback as _rollback

    typer.echo(f"{model}@champion -> v{_rollback(model, configure_environment())}")


@app.command()
def export(model: str = typer.Argument(..., help="registered model: NAME (= NAME@champion), NAME@ALIAS or "
                                                 "NAME/VERSION"),
           to: Path = typer.Option(..., "--to", help="folder to write; must be absent or empty"),
           overwrite: bool = typer.Option(False, help="replace a non-empty --to folder")):
    """Export a registered ranker as a standard Hugging Face checkpoint. A decoder ranker becomes a
    *ForSequenceClassification (e.g. Qwen3ForSequenceClassification) scoring logit(yes) - logit(no), with its
    tokenizer, scoring contract, prompt (flywheel_prompt.json) and a model card (README.md) saying how to feed it
    with transformers, sentence-transformers' CrossEncoder, vLLM or TEI. An encoder ranker is copied as it is and
    is NOT standard (it needs models.cross_encoder.BertMeanPoolRanker). Soft-token rankers are refused.
    Exit code 2 on an unknown model, alias or version, or a refused export."""
    import tempfile

    from flywheel.serving.export import export_ranker, resolve_checkpoint

    paths = configure_environment()
    try:
        with tempfile.TemporaryDirectory(prefix="flywheel-export-") as tmp:
            checkpoint, source = resolve_checkpoint(model, paths, Path(tmp))
            info = export_ranker(checkpoint, to, source, overwrite=overwrite)
    except (LookupError, ValueError, FileExistsError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2)
    typer.echo(f"{source['uri']} (alias {source['alias'] or '-'}, run {source['run_id']}) -> {info['out']}: "
               f"{info['class']}, {info['family']} ranker, {'standard' if info['standard'] else 'NOT standard'}")
    typer.echo("files: " + ", ".join(info["files"]))
    if not info["standard"]:
        typer.secho(f"WARNING: {info['warning']}", fg="yellow", bold=True, err=True)


@app.command()
def workbench(config: str = typer.Option("configs/demo.yaml", envvar="FLYWHEEL_CONFIG",
                                         help="flywheel config: its policy is the one being edited, its judge "
                                              "previews drafts"),
              host: str = typer.Option("127.0.0.1", help="address to listen on; anything but loopback needs "
                                                           "--access"),
              port: int = typer.Option(8780, help="port to listen on"),
              access: Optional[Path] = typer.Option(None, envvar="FLYWHEEL_WORKBENCH_ACCESS",
                                                    help="YAML file of users and roles (viewer, editor, publisher) "
                                                         "and how they are identified (token or a proxy's header); "
                                                         "see README 'For product managers'. Without it the "
                                                         "workbench is single-user on loopback"),
              preview_deployment: Optional[str] = typer.Option(None, envvar="FLYWHEEL_PREVIEW_DEPLOYMENT",
                                                               help="run previews through this Prefect deployment "
                                                                    "(e.g. policy-preview/policy-preview) instead "
                                                                    "of in the workbench process")):
    """The policy workbench: product managers see the active grading policy, its versions and calibration
    figures, edit a draft with line-level validation, preview its impact on the golden set, publish or roll
    back, and look at the judge's disagreements and the day's labels. Open http://HOST:PORT/ in a browser."""
    from flywheel.workbench.app import serve_workbench

    try:
        serve_workbench(config, host, port, access, preview_deployment)
    except (ValueError, FileNotFoundError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2)


@app.command()
def ui(which: str = typer.Argument(..., help="mlflow or prefect"), port: Optional[int] = None):
    """Start the MLflow or Prefect UI on the flywheel home (Ctrl-C to stop)."""
    paths = configure_environment()
    env = os.environ.copy()
    if which == "mlflow":
        cmd = ["mlflow", "ui", "--backend-store-uri", paths.mlflow_uri, "--port", str(port or 5000)]
    elif which == "prefect":
        cmd = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port or 4200)]
    else:
        raise typer.BadParameter("choose mlflow or prefect")
    raise typer.Exit(subprocess.call([str(Path(sys.executable).parent / cmd[0])] + cmd[1:], env=env))


if __name__ == "__main__":
    app()
