"""MLflow tracking and the model registry: experiments, ranker registration with lineage, aliases.

Rankers are logged as MLflow pyfunc models (input: DataFrame of query, title, text; output: scores) wrapping
the HF checkpoint and its scoring contract, so ``mlflow.pyfunc.load_model("models:/<name>@champion")`` is all
a consumer needs. Promotion is decided by the pure :func:`promotion_decision`; moving the alias is one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow.pyfunc

from flywheel.settings import Paths

PIP_REQUIREMENTS = ["torch==2.13.0", "transformers==5.24.0", "pandas==3.1.1", "mlflow==3.17.2"]


def setup_mlflow(paths: Paths, experiment: str = "flywheel"):
    import mlflow

    mlflow.set_tracking_uri(paths.mlflow_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:     # a tracking server places artifacts itself (proxied: the client needs no path to them)
        location = None if paths.remote_tracking else paths.mlflow_artifacts.as_uri() + f"/{experiment}"
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return mlflow


class RankerModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: scores a DataFrame of (query, title, text) with the checkpoint's scoring contract."""

    def load_context(self, context):
        from models.ranker import load_ranker

        self.model, self.tok, self.contract = load_ranker(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        from models.ranker import score_pairs

        df = model_input
        titles, texts = df["title"].astype(str).tolist(), df["text"].astype(str).tolist()
        from flywheel.retrieval.embeddings import document_inputs

        return score_pairs(self.model, self.tok, self.contract, df["query"].astype(str).tolist(), titles, texts,
                           **document_inputs(self.contract, titles, texts))


def log_ranker(rung: dict, metrics: dict, lineage: dict, paths: Paths, registered_name: str) -> dict:
    """Log one rung as a run with metrics and lineage tags, and register it; returns name and version."""
    mlflow = setup_mlflow(paths)
    with mlflow.start_run(run_name=f"{rung['rung']}-{rung['model_version']}") as run:
        mlflow.set_tags({f"lineage.{k}": str(v) for k, v in lineage.items()} | {"rung": rung["rung"]})
        mlflow.log_params({"layers": rung["layers"], "params_non_embedding": rung["params_non_embedding"],
                           "model_version": rung["model_version"]})
        mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in metrics.items() if v is not None})
        info = mlflow.pyfunc.log_model(name="ranker", python_model=RankerModel(),
                                       artifacts={"checkpoint": rung["path"]}, pip_requirements=PIP_REQUIREMENTS)
        mv = mlflow.register_model(info.model_uri, registered_name,
                                   tags={"model_version": rung["model_version"], "ndcg_at_10": str(metrics.get("ndcg@10"))})
    return {"name": registered_name, "version": str(mv.version), "run_id": run.info.run_id,
            "model_version": rung["model_version"]}


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def promotion_decision(challenger_ndcg: float, teacher_ndcg: float, champion_ndcg: float | None,
                       min_ndcg: float, min_ratio_to_teacher: float, tolerance: float,
                       baselines: dict[str, float] | None = None,
                       min_gain_over_baseline: float = 0.0) -> PromotionDecision:
    """Pure gate: promote the challenger only if it is good in absolute terms, beats the best of ``baselines``
    (name -> NDCG@10 on the same test split: the ladder's zero-shot start, the bi-encoder, BM25) by
    ``min_gain_over_baseline``, is close enough to the teacher, and is not worse than the current champion
    (beyond a tolerance)."""
    if challenger_ndcg < min_ndcg:
        return PromotionDecision(False, f"NDCG@10 {challenger_ndcg:.4f} < minimum {min_ndcg:.4f}")
    if baselines:
        best = max(baselines, key=baselines.get)
        if challenger_ndcg < baselines[best] + min_gain_over_baseline:
            return PromotionDecision(False, f"NDCG@10 {challenger_ndcg:.4f} does not beat the best baseline, "
                                            f"{best} at {baselines[best]:.4f}, by promotion.min_gain_over_baseline "
                                            f"{min_gain_over_baseline:+.4f}: shipping it would make ranking worse "
                                            "than what the ladder started from")
    if teacher_ndcg > 0 and challenger_ndcg < min_ratio_to_teacher * teacher_ndcg:
        return PromotionDecision(False, f"NDCG@10 {challenger_ndcg:.4f} < {min_ratio_to_teacher:.0%} of the "
                                        f"teacher's {teacher_ndcg:.4f}")
    if champion_ndcg is not None and challenger_ndcg < champion_ndcg - tolerance:
        return PromotionDecision(False, f"NDCG@10 {challenger_ndcg:.4f} is below the champion's "
                                        f"{champion_ndcg:.4f} (tolerance {tolerance})")
    return PromotionDecision(True, "no champion yet" if champion_ndcg is None else
                             f"NDCG@10 {challenger_ndcg:.4f} vs champion {champion_ndcg:.4f}")


def alias_version(name: str, alias: str, paths: Paths):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    setup_mlflow(paths)
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: str, paths: Paths) -> None:
    from mlflow import MlflowClient

    setup_mlflow(paths)
    MlflowClient().set_registered_model_alias(name, alias, version)


def rollback(name: str, paths: Paths) -> str:
    """Point ``champion`` back at the version that held it before (recorded in the ``previous_champion`` tag)."""
    from mlflow import MlflowClient

    setup_mlflow(paths)
    client = MlflowClient()
    current = client.get_model_version_by_alias(name, "champion")
    prev = current.tags.get("previous_champion")
    if not prev:
        raise RuntimeError(f"{name}@champion (v{current.version}) has no previous champion to roll back to")
    client.set_registered_model_alias(name, "champion", prev)
    return str(prev)


def log_calibration(summary: dict, paths: Paths) -> str:
    """Log a calibration (metrics, gate, confusion-matrix figure, full JSON) as an MLflow run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mlflow = setup_mlflow(paths, "flywheel-calibration")
    with mlflow.start_run(run_name=f"judge-{summary['judge_version']}") as run:
        mlflow.set_tags({"judge_version": summary["judge_version"], "policy_version": summary["policy_version"],
                         "backend": summary["backend"], "gate": str(summary["gate"]["passed"])})
        for split in ("calibration", "test", "bm25_baseline_test"):
            m = summary.get(split)
            if m:
                mlflow.log_metrics({f"{split}.{k}": v for k, v in m.items() if isinstance(v, float)})
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
        for ax, split in zip(axes, ("calibration", "test")):
            if summary.get(split):
                ax.imshow(summary[split]["confusion"], cmap="Blues")
                for (i, j), v in __import__("numpy").ndenumerate(__import__("numpy").array(summary[split]["confusion"])):
                    ax.text(j, i, str(v), ha="center", va="center")
                ax.set(title=f"{split} (QWK {summary[split]['qwk']:.2f})", xlabel="judge grade", ylabel="human grade")
        fig.tight_layout()
        mlflow.log_figure(fig, "confusion.png")
        plt.close(fig)
        mlflow.log_dict(summary, "calibration.json")
    return run.info.run_id


def compressed_source_refusal(evaluation: dict, source: str, min_gain: float = 0.0) -> str | None:
    """Why a compressed student may not be promoted whatever its own figure, or None. Compressed students are
    measured on judged pools only; where the gate reads another protocol (the rerank protocol, for small judged
    pools) they are held to their source's result there: a source below the best baseline by that protocol
    (``evaluation`` as :func:`flywheel.evaluation.evaluate.evaluate_all` returns it) refuses them too."""
    metric = evaluation.get("gate_metric", "ndcg@10")
    systems = evaluation["systems"]
    if metric == "ndcg@10" or metric not in systems.get(source, {}):
        return None
    base = {b: systems[b][metric] for b in evaluation.get("baselines", []) if metric in systems.get(b, {})}
    if not base:
        return None
    best = max(base, key=base.get)
    if systems[source][metric] >= base[best] + min_gain:
        return None
    return (f"its source {source} scores {systems[source][metric]:.4f} by {metric}, the gate's protocol, below the "
            f"best baseline {best} ({base[best]:.4f}); compressed students are measured on judged pools only, so "
            "they are held to their source's result")


def promote_challenger(name: str, challenger_version: str, challenger_ndcg: float, teacher_ndcg: float,
                       promotion, paths: Paths, baselines: dict[str, float] | None = None) -> dict:
    """Apply :func:`promotion_decision` against the current champion and move the alias if it says so.

    ``promotion`` is a :class:`flywheel.config.PromotionConfig`; ``baselines`` as in :func:`promotion_decision`.
    Idempotent: promoting the version that already
    holds ``champion`` changes nothing. The replaced champion is remembered for :func:`rollback`.
    """
    from mlflow import MlflowClient

    champ = alias_version(name, "champion", paths)
    already = champ is not None and str(champ.version) == str(challenger_version)
    if already:
        return {"promoted": False, "reason": f"v{challenger_version} is already the champion",
                "champion": str(champ.version), "challenger": str(challenger_version)}
    champ_ndcg = float(champ.tags["ndcg_at_10"]) if champ is not None else None
    decision = promotion_decision(challenger_ndcg, teacher_ndcg, champ_ndcg, promotion.min_ndcg,
                                  promotion.min_ratio_to_teacher, promotion.tolerance_vs_champion, baselines,
                                  promotion.min_gain_over_baseline)
    if decision.promote:
        if champ is not None:
            MlflowClient().set_model_version_tag(name, challenger_version, "previous_champion", str(champ.version))
        set_alias(name, "champion", challenger_version, paths)
    now = alias_version(name, "champion", paths)
    return {"promoted": decision.promote, "reason": decision.reason,
            "champion": str(now.version) if now else None, "challenger": str(challenger_version)}


def log_curves(summary: dict, paths: Paths) -> str:
    """One MLflow run holding the size-versus-NDCG and input-length-versus-NDCG plots and their data."""
    import matplotlib.pyplot as plt

    from flywheel.evaluation.report import curve_figures, size_curve

    mlflow = setup_mlflow(paths)
    comp = summary.get("compression") or {}
    with mlflow.start_run(run_name=f"curves-{summary['date']}") as run:
        mlflow.set_tags({"kind": "curves", "date": summary["date"]})
        for name, fig in curve_figures(summary).items():
            mlflow.log_figure(fig, f"{name}.png")
            plt.close(fig)
        mlflow.log_dict({"size_vs_ndcg": size_curve(summary), "length_vs_ndcg": comp.get("length_curve", []),
                         "combined": comp.get("combined"), "pruning": summary.get("pruning")}, "curves.json")
        c = comp.get("combined") or {}
        if c.get("speedup"):
            mlflow.log_metrics({"combined_speedup_vs_teacher_naive": c["speedup"],
                                "combined_ndcg_ratio_to_teacher": c["ndcg_ratio_to_teacher"]})
    return run.info.run_id
