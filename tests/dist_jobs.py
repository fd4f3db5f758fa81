"""Jobs the distributed tests launch on every rank through flywheel.training.launch (``tests.dist_jobs:NAME``):
a tiny Qwen3 ranker trained on a toy task, its final weights saved by rank 0."""

from __future__ import annotations

import numpy as np
import pandas as pd

WORDS = ("crime budget school permit water transit housing health parks election salary traffic library fire "
         "police energy museum tax zoning census").split()


def toy_pairs(n_queries: int = 10, seed: int = 0, docs: int = 4) -> pd.DataFrame:
    """Query = one topic word; ``docs`` documents each, the first two relevant (they mention it), the others
    about other topics only."""
    rng = np.random.default_rng(seed)
    rows = []
    for qi in range(n_queries):
        w = WORDS[qi % len(WORDS)]
        others = [x for x in WORDS if x != w]
        for d in range(docs):
            body = list(rng.choice(others, size=5))
            if d < 2:
                body.insert(int(rng.integers(0, 5)), w)
            rows.append({"query_id": f"q{qi}", "query": w, "doc_id": f"q{qi}-d{d}", "title": " ".join(body[:2]),
                         "text": " ".join(body[2:]), "target": 1.0 if d < 2 else 0.0})
    return pd.DataFrame(rows)


def save_tiny_base(path):
    """A tiny Qwen3 ranker (BPE tokenizer trained on the toy words) saved at ``path``: the distributed and LoRA
    tests' starting point."""
    from models.decoder import DecoderRanker, build_tiny_qwen3, decoder_contract, train_bpe_tokenizer
    from models.ranker import save_ranker

    p = toy_pairs()
    tok = train_bpe_tokenizer((p.title + " " + p.text).tolist() + WORDS * 10, vocab_size=600)
    c = decoder_contract(tok, max_length=32)
    return save_ranker(DecoderRanker(build_tiny_qwen3(tok, "qwen3-tiny", seed=0), c.yes_token_id, c.no_token_id),
                       tok, c, path)


def train_toy(base: str, out: str, strategy: str = "ddp", precision: str = "fp32", micro: int | None = None,
              accum: int | None = None, epochs: int = 2, batch_size: int = 8, checkpoint_every: int = 0,
              ckpt_dir: str | None = None, lora: bool = False, validate: bool = False, cfg=None, paths=None,
              progress=None) -> dict:
    import torch

    from models.lora import apply_lora, merge_lora
    from models.ranker import load_ranker, score_pairs
    from models.runtime import init_runtime
    from models.train import TrainConfig, train_ranker

    rt = init_runtime("cpu", precision, strategy)
    model, tok, contract = load_ranker(base)
    if lora:
        apply_lora(model, 4, 8.0, 0.0, ["q_proj", "v_proj"])
    val = toy_pairs(n_queries=6, seed=9)

    def margin(m) -> float:
        """Validation: mean score of relevant minus irrelevant pairs on held-out queries (every rank scores)."""
        s = np.array(score_pairs(m, tok, contract, val["query"].tolist(), val.title.tolist(), val.text.tolist()))
        return float(s[val.target.to_numpy() == 1].mean() - s[val.target.to_numpy() == 0].mean())

    res = train_ranker(model, tok, contract, toy_pairs(), "target", "labels",
                       TrainConfig(epochs=epochs, batch_size=batch_size, lr=1e-3, seed=0, micro_batch_size=micro,
                                   grad_accum_steps=accum, checkpoint_every=checkpoint_every,
                                   eval_every=2 if validate else 0),
                       runtime=rt, checkpoint_dir=ckpt_dir, validate=margin if validate else None)
    if rt.is_main:
        torch.save({k: v.detach().cpu() for k, v in merge_lora(model).state_dict().items()}, out)
    return {"losses": res.losses, "world": rt.world, "strategy": rt.strategy, "history": res.history,
            "best_step": res.best_step}
