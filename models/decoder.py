"""Decoder-only rankers (Qwen3 first; any causal LM transformers loads): one forward pass, no generation.

The prompt is the instruction, then the query, then the document, then a short cue; the score is
``logit("yes") − logit("no")`` at the last prompt token, computed as ``h_last · (W[yes] − W[no])`` from only those
two rows of the output projection (never the full vocabulary).

Token layout (the scoring contract pins it): ``[bos?] prefix(instruction, query) | document | cue``, each segment
tokenised on its own and concatenated, so the query prefix is the same tokens whether a pair is scored alone, in
a batch, or after a cached prefix (the shared-prefix scorer computes it once per query). Sequences are padded
on the right: with causal attention a real token never sees padding, so a pair's score does not depend on what
else is in its batch.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from models.contract import ScoringContract, check_layers, doc_strings, placeholder_id
from models.loading import hf_load

INSTRUCTION = ('Judge whether the document meets the needs of the search query. Answer only "yes" or "no".')
PREFIX = "{instruction}\nQuery: {query}\nDocument: "
CUE = "\nRelevant:"


class DecoderRanker(nn.Module):
    """A causal LM read as a ranker. ``lm`` stays a plain ``*ForCausalLM`` (saved and loaded with
    ``save_pretrained`` / ``from_pretrained``); only the rows ``yes`` and ``no`` of its output projection are used."""

    def __init__(self, lm, yes_id: int, no_id: int):
        super().__init__()
        self.lm, self.yes_id, self.no_id = lm, int(yes_id), int(no_id)

    @property
    def config(self):
        return self.lm.config

    def head(self) -> torch.Tensor:
        """[H]: W[yes] − W[no] (two rows of the output projection)."""
        w = self.lm.get_output_embeddings().weight
        return w[self.yes_id] - w[self.no_id]

    def hidden(self, input_ids, attention_mask, **kw) -> torch.Tensor:
        # no key/value cache: a whole-prompt forward reads none back (the config's use_cache would build one)
        return self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                     **kw).last_hidden_state

    def forward(self, input_ids=None, attention_mask=None, last_index=None, inputs_embeds=None, **_):
        if inputs_embeds is not None:
            h = self.hidden(None, attention_mask, inputs_embeds=inputs_embeds)     # [B, T, H]
        else:
            h = self.hidden(input_ids, attention_mask)                              # [B, T, H]
        h_last = h[torch.arange(h.shape[0]), last_index]                          # [B, H]
        return SequenceClassifierOutput(logits=(h_last.float() @ self.head().float())[:, None])   # [B, 1]

    def save_pretrained(self, path, **kw):
        self.lm.save_pretrained(path, **kw)

    def blocks(self) -> nn.ModuleList:
        return self.lm.get_decoder().layers

    def keep_layers(self, layers: list[int]) -> None:
        """Keep only the given layers, in order; the per-layer attention types are cut to match and each
        attention's cache slot is renumbered, so the config stays loadable."""
        check_layers(layers, len(self.blocks()))
        kept = nn.ModuleList([self.blocks()[i] for i in layers])
        self.lm.get_decoder().layers = kept
        cfg = self.lm.config
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = [cfg.layer_types[i] for i in layers]
        for new_idx, block in enumerate(kept):
            if hasattr(block, "self_attn"):
                block.self_attn.layer_idx = new_idx
        cfg.num_hidden_layers = len(layers)


def yes_no_ids(tokenizer) -> tuple[int, int]:
    """The token ids of " yes" and " no" (the last token of each, as a model would write them after the cue)."""
    ids = []
    for w in (" yes", " no"):
        t = tokenizer(w, add_special_tokens=False)["input_ids"]
        if not t:
            raise ValueError(f"tokenizer cannot encode {w!r}")
        ids.append(t[-1])
    if ids[0] == ids[1]:
        raise ValueError("' yes' and ' no' map to the same token: choose other answer words")
    return ids[0], ids[1]


def decoder_contract(tokenizer, max_length: int = 128, bos: bool = False, **kw) -> ScoringContract:
    """The contract of a decoder ranker built on ``tokenizer``: the instruction, the yes/no token ids, padding."""
    yes, no = yes_no_ids(tokenizer)
    return ScoringContract(family="decoder", score="logit_yes_minus_no", instruction=INSTRUCTION,
                           max_length=max_length, yes_token_id=yes, no_token_id=no,
                           bos_token_id=tokenizer.bos_token_id if bos else None,
                           pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0, **kw)


def segments(tokenizer, contract, query: str, doc: str) -> tuple[list[int], list[int]]:
    """(prefix ids, document + cue ids) for one pair, truncated as the contract says: the query to
    ``max_query_tokens``, the document's tail so the whole prompt fits ``max_length``."""
    q_ids = tokenizer(query, add_special_tokens=False)["input_ids"][: contract.max_query_tokens]
    q = tokenizer.decode(q_ids)
    prefix = tokenizer(PREFIX.format(instruction=contract.instruction, query=q), add_special_tokens=False)["input_ids"]
    if contract.bos_token_id is not None:
        prefix = [contract.bos_token_id] + prefix
    cue = tokenizer(CUE, add_special_tokens=False)["input_ids"]
    if contract.compression == "soft":         # the document is soft_tokens slots, filled from its embedding
        return prefix, [placeholder_id(tokenizer, "decoder")] * contract.soft_tokens + cue
    room = max(1, contract.max_length - len(prefix) - len(cue))
    d = tokenizer(doc, add_special_tokens=False)["input_ids"][:room]
    return prefix, d + cue


def encode_pairs(tokenizer, contract, queries: list[str], titles: list[str], texts: list[str]) -> dict:
    """Right-padded batch: input_ids, attention_mask [B, T] and last_index [B] (the cue's last token)."""
    seqs, starts = [], []
    for q, d in zip(queries, doc_strings(tokenizer, contract, titles, texts)):
        p, s = segments(tokenizer, contract, q, d)
        seqs.append(p + s)
        starts.append(len(p))
    width = max(map(len, seqs))
    pad = contract.pad_token_id
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    out = {"input_ids": ids, "attention_mask": mask, "last_index": torch.tensor([len(s) - 1 for s in seqs])}
    if contract.compression == "soft":
        soft = torch.zeros((len(seqs), width), dtype=torch.bool)
        for i, p in enumerate(starts):
            soft[i, p:p + contract.soft_tokens] = True
        out["soft_mask"] = soft
    return out


def prepare_shared_prefix(tokenizer, contract, queries: list[str], titles: list[str], texts: list[str]
                          ) -> tuple[list[list[int]], list[tuple[int, list[int]]]]:
    """The tokenisation half of the shared-prefix scorer: (prefix ids of each distinct query, in order of first
    appearance; (query index, document + cue ids) of each pair). The same ids as :func:`segments`, with each
    query's prefix and the cue tokenised once and the documents in one batched tokenizer call."""
    uniq = list(dict.fromkeys(queries))
    where = {q: i for i, q in enumerate(uniq)}
    cue = tokenizer(CUE, add_special_tokens=False)["input_ids"]
    prefixes = []
    for q in uniq:
        q_ids = tokenizer(q, add_special_tokens=False)["input_ids"][: contract.max_query_tokens]
        pre = tokenizer(PREFIX.format(instruction=contract.instruction, query=tokenizer.decode(q_ids)),
                        add_special_tokens=False)["input_ids"]
        prefixes.append(([contract.bos_token_id] if contract.bos_token_id is not None else []) + pre)
    if contract.compression == "soft":
        slots = [placeholder_id(tokenizer, "decoder")] * contract.soft_tokens
        return prefixes, [(where[q], slots + cue) for q in queries]
    docs = doc_strings(tokenizer, contract, titles, texts)
    doc_ids = tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []
    rows = []
    for q, d in zip(queries, doc_ids):
        room = max(1, contract.max_length - len(prefixes[where[q]]) - len(cue))
        rows.append((where[q], d[:room] + cue))
    return prefixes, rows


BATCH_OVERHEAD_TOKENS = 64


def length_buckets(order: list[int], lengths: list[int], max_batch: int,
                   overhead_tokens: int = BATCH_OVERHEAD_TOKENS) -> list[list[int]]:
    """Split ``order`` (items sorted by ascending ``lengths``) into consecutive batches of at most ``max_batch``
    that minimise the padded tokens computed, ``Σ_batches (size × longest + overhead_tokens)``: one query's
    documents differ in length, and padding every one to the longest computed ~2x the real tokens on the golden
    documents. ``overhead_tokens`` is a batch's fixed cost (kernel launches, the prefix cache copy) in tokens, so
    the split does not shatter into tiny batches. Exact dynamic programme over the sorted lengths, O(n·max_batch)."""
    n = len(order)
    if any(a > b for a, b in zip(lengths, lengths[1:])):
        raise ValueError("length_buckets needs the items sorted by ascending length")
    best = [0.0] + [float("inf")] * n          # best[j]: cost of the first j items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_batch), j):           # the last batch is items i .. j-1
            c = best[i] + (j - i) * lengths[j - 1] + overhead_tokens
            if c < best[j]:
                best[j], cut[j] = c, i
    batches, j = [], n
    while j > 0:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return batches[::-1]


def _decoder_call(dec):
    return "cache" if "cache" in inspect.signature(dec.forward).parameters else "past_key_values"   # transformers 5.2x


@torch.inference_mode()
def score_prepared(model: DecoderRanker, prefixes: list[list[int]], rows: list[tuple[int, list[int]]],
                   pad_token_id: int, batch_size: int = 64) -> list[float]:
    """Score pairs given as (query index, document + cue ids) against their queries' ``prefixes``, each prefix
    (instruction + query) run once: all prefixes go through the model together (right-padded), and every batch of
    documents — from one query or many, grouped by length (:func:`length_buckets`) — reads its rows' prefix keys
    and values from that cache. A row's padded prefix positions are masked out, its document positions continue
    its own prefix's, so a pair scores the same whichever pairs share its batch (within float rounding)."""
    from transformers import DynamicCache

    model.eval()
    if not rows:
        return []
    dec = model.lm.get_decoder()
    dev = model.head().device
    kv = _decoder_call(dec)
    plen = torch.tensor([len(p) for p in prefixes])
    width = int(plen.max())
    chunks = []
    for s in range(0, len(prefixes), batch_size):                 # the prefixes, in batches, padded to `width`
        chunk = prefixes[s:s + batch_size]
        ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, p in enumerate(chunk):
            ids[r, :len(p)], mask[r, :len(p)] = torch.tensor(p), 1
        out = dec(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=True,
                  **{kv: DynamicCache(config=model.config)})
        layers = (getattr(out, "cache", None) or out.past_key_values).layers
        chunks.append(([layer.keys for layer in layers], [layer.values for layer in layers]))  # [q, kv, width, d]
    keys = [torch.cat(ks) for ks in zip(*(c[0] for c in chunks))]
    values = [torch.cat(vs) for vs in zip(*(c[1] for c in chunks))]
    head = model.head()
    out = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][1]))
    for idx in length_buckets(order, [len(rows[i][1]) for i in order], batch_size):
        q = torch.tensor([rows[i][0] for i in idx])
        suf = [rows[i][1] for i in idx]
        pw, sw = int(plen[q].max()), max(map(len, suf))             # this batch's prefix and document widths
        cache = DynamicCache(config=model.config)
        qd = q.to(keys[0].device)
        for li, (k, v) in enumerate(zip(keys, values)):
            cache.update(k[qd, :, :pw], v[qd, :, :pw], li)
        ids = torch.full((len(idx), sw), pad_token_id, dtype=torch.long)
        mask = torch.ones((len(idx), pw + sw), dtype=torch.long)
        for r, x in enumerate(suf):
            ids[r, :len(x)] = torch.tensor(x)
            mask[r, int(plen[q[r]]):pw] = 0                         # this row's prefix padding
        pos = plen[q][:, None] + torch.arange(sw)[None]             # [b, sw]: continue the row's own prefix
        # Documents are right-padded: under the causal mask a real token never sees its row's padding, and the
        # padded positions' outputs are never read.
        h = dec(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), use_cache=True,
                **{kv: cache}).last_hidden_state                                      # [b, sw, H]
        last = torch.tensor([len(x) - 1 for x in suf], device=dev)
        vals = h[torch.arange(len(idx), device=dev), last].float() @ head.float()     # [b]
        for i, val in zip(idx, vals.tolist()):
            out[i] = val
    return out


def score_shared_prefix(model: DecoderRanker, tokenizer, contract, queries: list[str], titles: list[str],
                        texts: list[str], batch_size: int = 64) -> list[float]:
    """Score pairs of any number of queries, each query's prefix computed once (:func:`prepare_shared_prefix`,
    then :func:`score_prepared`); scores in input order."""
    out = [0.0] * len(queries)
    for idx in _query_groups(queries, MAX_PREFIXES):
        prefixes, rows = prepare_shared_prefix(tokenizer, contract, [queries[i] for i in idx],
                                               [titles[i] for i in idx], [texts[i] for i in idx])
        for i, v in zip(idx, score_prepared(model, prefixes, rows, contract.pad_token_id, batch_size)):
            out[i] = v
    return out


# Prefix keys/values held at once: a 0.6B decoder's is ~7 MB per query in bf16, so an offline call over tens of
# thousands of queries is scored in groups of this many queries (a service batch stays one group).
MAX_PREFIXES = 512


def _query_groups(queries: list[str], limit: int) -> list[list[int]]:
    """Pair indices grouped so each group holds at most ``limit`` distinct queries (all of a query's pairs in one)."""
    by_query: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        by_query.setdefault(q, []).append(i)
    groups = [[]]
    for n, idx in enumerate(by_query.values()):
        if n and n % limit == 0:
            groups.append([])
        groups[-1].extend(idx)
    return groups


# ---------------------------------------------------------------- building decoder rungs

TINY_QWEN3 = {   # presets for tests and CPU ladders: (layers, hidden, heads, kv heads, intermediate)
    "qwen3-tiny": (4, 64, 4, 2, 192),
    "qwen3-mini": (6, 128, 4, 2, 384),
}


def train_bpe_tokenizer(texts: list[str], vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained on ``texts`` in seconds (for tiny decoders built from a config);
    " yes" and " no" are single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|pad|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts) + [" yes", " no"] * 50 + [INSTRUCTION, CUE] * 50, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|endoftext|>")
    fast.add_tokens([" yes", " no"])
    return fast


def build_tiny_qwen3(tokenizer, preset: str = "qwen3-tiny", seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if preset not in TINY_QWEN3:
        raise ValueError(f"unknown tiny Qwen3 preset {preset!r}; choose from {sorted(TINY_QWEN3)}")
    layers, hidden, heads, kv, inter = TINY_QWEN3[preset]
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      head_dim=hidden // heads, max_position_embeddings=1024, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=None)
    with hf_load:                      # construction ties the embeddings: not while another thread loads
        return Qwen3ForCausalLM(cfg).eval()


def load_causal_lm(path: str | Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    with hf_load:
        lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return lm, tok


def count_params(model: DecoderRanker, non_embedding: bool = True) -> int:
    total = sum(p.numel() for p in model.lm.parameters())
    if non_embedding:
        total -= model.lm.get_input_embeddings().weight.numel()
        out = model.lm.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != model.lm.get_input_embeddings().weight.data_ptr():
            total -= out.weight.numel()
    return int(total)
