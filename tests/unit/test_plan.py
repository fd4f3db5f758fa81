"""`flywheel plan`: parameter counts, memory per GPU and time per epoch of each rung, checked against arithmetic
written out here from the checkpoints' shapes (not by calling the planner's helpers), and the refusal of a rung
that cannot fit, naming the setting to change."""

import ast
import json
from pathlib import Path

import pytest
import yaml

from flywheel.config import FlywheelConfig, LaunchSettings, load_config
from flywheel.training import plan as pl

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ROOT / "configs" / "production.yaml"
GIB = 2 ** 30


def with_teacher(cfg: FlywheelConfig, **update) -> FlywheelConfig:
    rungs = [cfg.ladder.rungs[0].model_copy(update=update)] + cfg.ladder.rungs[1:]
    return cfg.model_copy(update={"ladder": cfg.ladder.model_copy(update={"rungs": rungs})})


def per_gpu(weights, grads, optim, acts) -> float:
    """The planner's stated total: the sum x 1.10 (fragmentation) + 1.5 GiB (context, workspaces)."""
    return (weights + grads + optim + acts) * 1.10 / GIB + 1.5


def test_production_fits_8x80_and_matches_the_hand_calculation():
    plans = {p.rung: p for p in pl.check_fits(load_config(PRODUCTION), gpus=8, gpu_memory_gb=80)}
    assert all(p.fits and p.world == 8 for p in plans.values())
    W, pairs, s = 8, 100_000, 512
    flop_s = W * 989e12 * 0.4

    # Teacher: Qwen2.5-7B-Instruct, h 3584, 28 heads x 128, 4 KV heads x 128, MLP 18944, vocab 152064, 28 layers,
    # untied embeddings, q/k/v biases. LoRA r 16 on all seven projections, bf16, fsdp over 8, checkpointing, micro 8.
    layer = 3584 * 3584 + 2 * 3584 * 512 + 3584 * 3584 + (3584 + 2 * 512) + 3 * 3584 * 18944 + 2 * 3584
    total = 28 * layer + 3584 + 2 * 152064 * 3584
    assert total == 7_615_616_512                                     # the published 7.61B
    lora = 28 * 16 * ((3584 + 3584) + 2 * (3584 + 512) + (3584 + 3584) + 2 * (3584 + 18944) + (18944 + 3584))
    assert lora == 40_370_176
    # fp32 base + adapters sharded over 8, two fp32 layers gathered, and (frozen, checkpointed) one layer's bf16 casts
    weights = (total + lora) * 4 / W + 2 * layer * 4 + layer * 2
    # 256 pairs a step = 8 a micro-batch x 8 GPUs x 4 accumulated: gradients stay whole until the last one syncs
    grads, optim = lora * 4, lora * 8 / W
    acts = 28 * 8 * s * 3584 * 2 + 8 * s * 2 * (4 * 3584 + 2 * 3584 + 2 * 512 + 4 * 18944)
    t = plans["teacher"]
    assert (t.params, t.trainable, t.compute_params) == (total, lora, 28 * layer + 3584)
    assert t.weights_gib == pytest.approx(weights / GIB) and t.grads_gib == pytest.approx(grads / GIB)
    assert t.optimizer_gib == pytest.approx(optim / GIB) and t.activations_gib == pytest.approx(acts / GIB)
    assert t.total_gib == pytest.approx(per_gpu(weights, grads, optim, acts))
    assert t.seconds_per_epoch == pytest.approx((4 + 2) * (28 * layer + 3584) * pairs * s / flop_s)
    assert t.tokens_per_step == 256 * 512

    # Mid: Qwen3-1.7B, h 2048, 16 heads x 128, 8 KV heads, MLP 6144, vocab 151936, tied, q/k norms. Full
    # fine-tuning, bf16 (fp32 weights 4 + autocast's cached bf16 copies 2 bytes), ddp (nothing sharded; gradients
    # 4 bytes twice: the parameters' and DDP's buckets), checkpointing, micro 8.
    layer = 2048 * 2048 + 2 * 2048 * 1024 + 2048 * 2048 + 2 * 128 + 3 * 2048 * 6144 + 2 * 2048
    total = 28 * layer + 2048 + 151936 * 2048
    assert total == 1_720_574_976       # 1.72B unique (the hub's 2.03B counts the tied lm_head a second time)
    acts = 28 * 8 * s * 2048 * 2 + 8 * s * 2 * (4 * 2048 + 2 * 2048 + 2 * 1024 + 4 * 6144)
    m = plans["mid"]
    assert (m.params, m.trainable) == (total, total)
    assert (m.weights_gib, m.grads_gib, m.optimizer_gib) == pytest.approx((6 * total / GIB, 8 * total / GIB,
                                                                           8 * total / GIB))
    assert m.activations_gib == pytest.approx(acts / GIB)
    assert m.total_gib == pytest.approx(per_gpu(6 * total, 8 * total, 8 * total, acts))
    assert m.seconds_per_epoch == pytest.approx((6 + 2) * (28 * layer + 2048) * pairs * s / flop_s)

    # Student: Qwen3-0.6B, h 1024, 16 heads x 128, 8 KV heads, MLP 3072, tied. Full, bf16, ddp, no checkpointing,
    # micro 16: every layer keeps all its activations. Bytes per parameter as the mid's.
    layer = 1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024 + 2 * 128 + 3 * 1024 * 3072 + 2 * 1024
    total = 28 * layer + 1024 + 151936 * 1024
    assert total == 596_049_920                                       # the published 0.6B
    acts = 28 * 16 * s * 2 * (4 * 1024 + 2 * 2048 + 2 * 1024 + 4 * 3072)
    st = plans["student"]
    assert (st.params, st.trainable, st.micro_batch) == (total, total, 16)
    assert (st.weights_gib, st.grads_gib, st.optimizer_gib, st.activations_gib) == pytest.approx(
        (6 * total / GIB, 8 * total / GIB, 8 * total / GIB, acts / GIB))
    assert st.total_gib == pytest.approx(per_gpu(6 * total, 8 * total, 8 * total, acts))
    assert st.seconds_per_epoch == pytest.approx(6 * (28 * layer + 1024) * pairs * s / flop_s)


def test_the_7b_teacher_without_lora_is_refused_on_one_24gb_gpu():
    cfg = with_teacher(load_config(PRODUCTION), lora=None, strategy="fsdp")
    with pytest.raises(ValueError) as exc:
        pl.check_fits(cfg, gpus=1, gpu_memory_gb=24)
    teacher = next(line for line in str(exc.value).splitlines() if line.startswith("rung 'teacher'"))
    assert "1 x 24 GB" in teacher and "lora: {r: 16}" in teacher and "strategy: fsdp over at least" in teacher
    assert "gradient_checkpointing" not in teacher       # already on: advice names only what would help


def test_advice_leaves_out_what_is_already_set_or_would_not_help():
    plan = {p.rung: p for p in pl.plan_ladder(load_config(PRODUCTION), gpus=1, gpu_memory_gb=8)}["teacher"]
    assert not plan.fits and "set lora" not in plan.advice and "freeze_embeddings" not in plan.advice
    assert "fsdp over at least" in plan.advice


def test_plan_command_exit_codes_and_table(tmp_path):
    from typer.testing import CliRunner

    from flywheel.cli import app

    run = CliRunner().invoke
    ok = run(app, ["plan", "--config", str(PRODUCTION), "--gpus", "8", "--gpu-memory-gb", "80"])
    assert ok.exit_code == 0, ok.output
    assert "Qwen/Qwen2.5-7B-Instruct" in ok.output and "total / GPU" in ok.output and "Assumptions" in ok.output
    data = yaml.safe_load(PRODUCTION.read_text())
    del data["ladder"]["rungs"][0]["lora"]
    no_lora = tmp_path / "no_lora.yaml"
    no_lora.write_text(yaml.safe_dump(data))
    refused = run(app, ["plan", "--config", str(no_lora), "--gpus", "1", "--gpu-memory-gb", "24"])
    assert refused.exit_code == 3
    assert "rung 'teacher' needs" in refused.output and "lora" in refused.output and "fsdp" in refused.output


def test_cpu_rungs_are_planned_in_ram_and_never_refused():
    cfg = with_teacher(load_config(PRODUCTION), device="cpu", lora=None, strategy="single",
                       launch=LaunchSettings())
    teacher = pl.check_fits(cfg, gpus=8, gpu_memory_gb=80)[0]
    assert teacher.device == "cpu" and teacher.fits and teacher.total_gib > 80 and teacher.seconds_per_epoch is None


def test_an_unknown_checkpoint_says_how_to_give_its_shape():
    cfg = with_teacher(load_config(PRODUCTION), checkpoint="acme/ranker-that-does-not-exist-9b")
    with pytest.raises(ValueError, match="unknown checkpoint 'acme/ranker-that-does-not-exist-9b'.*local path"):
        pl.plan_ladder(cfg, gpus=8)


def test_a_local_checkpoint_is_read_from_its_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "qwen3", "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 192, "vocab_size": 1000,
        "tie_word_embeddings": True}))
    cfg = with_teacher(load_config(PRODUCTION), checkpoint=str(tmp_path), layers=[0, 1, 3], lora=None)
    teacher = pl.plan_ladder(cfg, gpus=8)[0]
    layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 2 * 16 + 3 * 64 * 192 + 2 * 64
    assert teacher.params == 3 * layer + 64 + 1000 * 64                   # three layers kept, tied embeddings


def test_tiny_presets_match_models_decoder():
    """The planner keeps its own copy of models.decoder.TINY_QWEN3 (so planning never imports torch)."""
    tree = ast.parse((ROOT / "models" / "decoder.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "TINY_QWEN3")
    for name, (layers, hidden, heads, kv, inter) in ast.literal_eval(node.value).items():
        s = pl.KNOWN[name]
        assert (s.layers, s.hidden, s.heads, s.kv_heads, s.intermediate, s.head_dim) == \
            (layers, hidden, heads, kv, inter, hidden // heads)


def test_known_shapes_give_the_published_parameter_counts():
    counts = {name: pl.param_counts(s)[0] for name, s in pl.KNOWN.items()}
    assert counts["gemma3-270m"] == pytest.approx(268e6, rel=0.01)
    assert counts["minilm"] == pytest.approx(22.6e6, rel=0.01)          # all-MiniLM-L6-v2 without its pooler
    assert counts["Qwen/Qwen2.5-7B-Instruct"] == pytest.approx(7.61e9, rel=0.01)


def test_the_flow_stops_before_training_when_a_rung_cannot_fit_this_machines_gpu(monkeypatch):
    """The daily flow's first task checks the ladder against this machine's GPU memory: the production ladder
    passes on 80 GiB GPUs; on one 24 GiB GPU the 7B teacher without LoRA stops the flow, naming what to change."""
    import types

    import torch

    from flywheel.config import load_config
    from tasks.train import plan_ladder

    cfg = load_config(ROOT / "configs" / "production.yaml")
    assert plan_ladder.fn(cfg)["checked"] is False               # this machine: no CUDA, nothing to check
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gib = {"memory": 80}
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(total_memory=gib["memory"] * 2**30))
    assert plan_ladder.fn(cfg)["checked"] is True
    gib["memory"] = 24
    one_gpu = [r.model_copy(update={"lora": None, "launch": r.launch.model_copy(update={"nproc_per_node": 1}),
                                    "strategy": "single"}) for r in cfg.ladder.rungs]
    small = cfg.model_copy(update={"ladder": cfg.ladder.model_copy(update={"rungs": one_gpu})})
    with pytest.raises(ValueError, match="rung 'teacher' needs .*lora"):
        plan_ladder.fn(small)
