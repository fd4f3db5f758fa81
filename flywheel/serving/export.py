"""Export a registered ranker as a standard Hugging Face checkpoint, for stacks that know nothing of the flywheel:
``transformers``' AutoModelForSequenceClassification, sentence-transformers' CrossEncoder, vLLM (``--task score``)
and TEI. ``flywheel export NAME[@ALIAS|/VERSION] --to DIR`` is the command.

A decoder ranker scores ``h_last · (W[yes] − W[no])``: that is a ``*ForSequenceClassification`` of the same
backbone whose one-row ``score`` layer is ``W[yes] − W[no]``, read at the last real token, which is how those
classes pool. The prompt goes into the inputs: the query side is the instruction and the (cut) query
(:func:`formatted_pair`), and the exported tokenizer's post-processor adds the flywheel's fixed tokens around the
pair — ``[bos?] query side | document side | cue`` — so a plain ``tokenizer(query_side, document_side)`` gives the
flywheel's ids. The cue is added as token ids, not as text: appended to the document's text it would merge with
its last characters in most tokenizers (".\\n" is one token in Qwen's and Gemma's).

Encoder rankers (``models.cross_encoder.BertMeanPoolRanker``: mean-pooled cosine plus a linear term) have no
standard class: they are exported as they are, marked non-standard, never silently converted into something that
scores differently. Soft-token rankers read a document embedding, not text: refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from flywheel.settings import Paths
from models.contract import CONTRACT_FILE, ScoringContract, doc_strings, load_contract
from models.decoder import CUE, PREFIX, segments

PROMPT_FILE = "flywheel_prompt.json"
IDENTITY = "torch.nn.modules.linear.Identity"   # sentence-transformers' activation_fn: the raw score, no sigmoid


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of ``NAME``, ``NAME@ALIAS`` or ``NAME/VERSION`` (``models:/`` optional); a bare
    name means ``@champion``."""
    spec = spec.removeprefix("models:/")
    if "@" in spec:
        name, alias = spec.rsplit("@", 1)
        return name, alias, None
    head, _, tail = spec.rpartition("/")
    if head and tail.isdigit():
        return head, None, tail
    return spec, "champion", None


def resolve_checkpoint(spec: str, paths: Paths, dst: Path | None = None) -> tuple[Path, dict]:
    """Download the ``checkpoint`` artifact of a registered ranker (into ``dst``, else a new temp dir); returns its
    local path and where it came from: name, version, alias, run id, the ``model_version`` tag, the run's lineage."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from flywheel.serving.registry import setup_mlflow

    name, alias, version = parse_spec(spec)
    setup_mlflow(paths)
    client = MlflowClient()
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        raise LookupError(f"no registered model {name!r} in {paths.mlflow_uri}; registered: {known or 'none'}")
    versions = sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int)
    if version is None:
        if alias not in registered.aliases:
            raise LookupError(f"model {name!r} has no alias {alias!r}; its aliases: "
                              f"{dict(registered.aliases) or 'none'}, its versions: {versions}")
        version = str(registered.aliases[alias])
    if version not in versions:
        raise LookupError(f"model {name!r} has no version {version}; its versions: {versions}")
    mv = client.get_model_version(name, version)
    uri = f"models:/{name}/{version}"
    artifacts = Model.load(uri).flavors.get("python_function", {}).get("artifacts", {})
    if "checkpoint" not in artifacts:
        raise LookupError(f"{uri} has no 'checkpoint' artifact: not a ranker logged by flywheel's log_ranker")
    dst = Path(dst or tempfile.mkdtemp(prefix="flywheel-export-"))
    local = download_artifacts(artifact_uri=f"{uri}/{artifacts['checkpoint']['path']}", dst_path=str(dst))
    tags = client.get_run(mv.run_id).data.tags if mv.run_id else {}
    source = {"name": name, "version": version, "alias": alias, "uri": uri, "run_id": mv.run_id,
              "model_version": mv.tags.get("model_version"),
              "lineage": {k.removeprefix("lineage."): v for k, v in tags.items() if k.startswith("lineage.")}}
    return Path(local), source


def formatted_pair(tokenizer, contract: ScoringContract, query: str, title: str, text: str) -> tuple[str, str]:
    """(query side, document side) to feed an exported decoder ranker: ``tokenizer(a, b)`` of the exported tokenizer
    gives the ids of ``models.decoder.segments`` — the query cut to ``max_query_tokens`` tokens, the document to
    the room ``max_length`` leaves. The document is cut by decoding its kept ids; where that text re-encodes to
    other ids (the cut splits a multi-byte character, so its kept bytes are no text), the document side ends at
    the last whole character instead: its ids are the flywheel's less those one or two byte tokens. The pair fits
    ``max_length`` (the tokenizer's ``model_max_length``, where stacks cut) unless the query side and cue leave
    no room: then the flywheel keeps one document token beyond it, and so does this pair."""
    if contract.family != "decoder" or contract.compression == "soft":
        raise ValueError("formatted_pair is for decoder rankers that read text (not encoders, not soft tokens)")
    q_ids = tokenizer(query, add_special_tokens=False)["input_ids"][: contract.max_query_tokens]
    a = PREFIX.format(instruction=contract.instruction, query=tokenizer.decode(q_ids))
    doc = doc_strings(tokenizer, contract, [title], [text])[0]
    n_cue = len(tokenizer(CUE, add_special_tokens=False)["input_ids"])
    keep = segments(tokenizer, contract, query, doc)[1][:-n_cue]
    if len(keep) == len(tokenizer(doc, add_special_tokens=False)["input_ids"]):
        return a, doc                                     # not cut: the document's own text
    for k in range(len(keep), 0, -1):
        b = tokenizer.decode(keep[:k])
        if tokenizer(b, add_special_tokens=False)["input_ids"] == keep[:k]:
            return a, b
    return a, ""


def export_ranker(checkpoint: Path, out: Path, source: dict | None = None, overwrite: bool = False) -> dict:
    """Write the ranker saved at ``checkpoint`` to ``out``: a decoder as a standard ``*ForSequenceClassification``
    (+ tokenizer, ``scoring_contract.json``, ``flywheel_prompt.json``, README.md model card); an encoder as itself,
    marked non-standard. Built in a temp dir beside ``out``, then renamed into place. Returns what was written."""
    checkpoint, out = Path(checkpoint), Path(out)
    contract = load_contract(checkpoint)
    if contract.compression == "soft":
        raise ValueError(f"{checkpoint}: a soft-token ranker reads {contract.soft_tokens} vectors projected from a "
                         f"{contract.embedder or 'bi-encoder'} embedding of the document, not its text; no text "
                         "model scores the same. Export a rung without soft compression.")
    if contract.family not in ("decoder", "encoder"):
        raise ValueError(f"{checkpoint}: unknown ranker family {contract.family!r} (decoder or encoder)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: choose another folder or pass overwrite=True "
                              "(--overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if contract.family == "decoder":
            info = _export_decoder(checkpoint, contract, tmp)
        else:
            info = _export_encoder(checkpoint, tmp)
        info |= {"family": contract.family, "source": source or {}}
        (tmp / "README.md").write_text(model_card(info, contract))
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info | {"out": str(out), "files": sorted(p.name for p in out.iterdir())}


def _export_decoder(checkpoint: Path, contract: ScoringContract, tmp: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from models.loading import hf_load

    with hf_load:
        lm = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)   # as stored: lossless
        cfg = lm.config.__class__.from_dict(lm.config.to_dict())
        cfg.num_labels, cfg.pad_token_id, cfg.architectures = 1, contract.pad_token_id, None
        cfg.sentence_transformers = {"activation_fn": IDENTITY}     # CrossEncoder: the raw score, not its sigmoid
        cls = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.float32)
    score = getattr(cls, "score", None)
    if not isinstance(score, torch.nn.Linear) or score.out_features != 1 or score.bias is not None:
        raise ValueError(f"{type(cls).__name__} has no bias-free one-row `score` layer to hold W[yes] − W[no]")
    getattr(cls, cls.base_model_prefix).load_state_dict(lm.base_model.state_dict())     # strict: every weight
    w = lm.get_output_embeddings().weight
    with torch.no_grad():
        score.weight.copy_((w[contract.yes_token_id] - w[contract.no_token_id])[None])       # [1, H]
    cls.save_pretrained(tmp)
    tok = AutoTokenizer.from_pretrained(checkpoint)
    prompt = prompt_spec(tok, contract)
    set_pair_template(tok, contract)
    tok.save_pretrained(tmp)
    (tmp / CONTRACT_FILE).write_text(json.dumps(asdict(contract), indent=2))
    (tmp / PROMPT_FILE).write_text(json.dumps(prompt, indent=2))
    return {"class": type(cls).__name__, "standard": True, "prompt": prompt}


def set_pair_template(tok, contract: ScoringContract) -> None:
    """Make ``tok(a, b)`` give ``[bos?] a b cue`` — Gemma's own template puts a second <bos> before b — padded on
    the right, saved so (Gemma's class defaults to left: RoPE makes that shift almost harmless, but right padding
    keeps the flywheel's positions exactly), with the contract's pad token (the classifier finds each row's last
    token by it), and cut, if asked, at ``max_length``."""
    from tokenizers import processors

    cue = tok(CUE, add_special_tokens=False)["input_ids"]
    specials = [{"id": "<flywheel-cue>", "ids": cue, "tokens": tok.convert_ids_to_tokens(cue)}]
    bos = ""
    if contract.bos_token_id is not None:
        bos_token = tok.convert_ids_to_tokens(contract.bos_token_id)
        specials.append({"id": bos_token, "ids": [contract.bos_token_id], "tokens": [bos_token]})
        bos = f"{bos_token}:0 "
    if hasattr(tok, "add_bos_token"):        # first: a class may rebuild its template when these flags change
        tok.add_bos_token = tok.add_eos_token = False
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos}$A:0 <flywheel-cue>:0", pair=f"{bos}$A:0 $B:1 <flywheel-cue>:1", special_tokens=specials)
    tok.pad_token = tok.convert_ids_to_tokens(contract.pad_token_id)
    tok.padding_side, tok.truncation_side, tok.model_max_length = "right", "right", contract.max_length
    tok.init_kwargs |= {"padding_side": "right", "truncation_side": "right"}     # what save_pretrained writes


def prompt_spec(tok, contract: ScoringContract) -> dict:
    bos = None if contract.bos_token_id is None else tok.convert_ids_to_tokens(contract.bos_token_id)
    return {"query_side": PREFIX.replace("{instruction}", contract.instruction),   # then .replace("{query}", q)
            "document_side": contract.template, "cue": CUE, "bos_token": bos,
            "max_length": contract.max_length, "max_query_tokens": contract.max_query_tokens,
            "compression": contract.compression, "doc_fields": list(contract.doc_fields),
            "doc_budget": contract.doc_budget,
            "layout": ([bos] if bos else []) + ["<query side>", "<document side>", CUE],   # ends: the tokenizer adds
            "score": "logit(yes) - logit(no) at the last token, no activation",
            "scoring_dtype": contract.dtype}


def _export_encoder(checkpoint: Path, tmp: Path) -> dict:
    for p in checkpoint.iterdir():
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
    return {"class": "models.cross_encoder.BertMeanPoolRanker", "standard": False,
            "warning": "NOT a standard checkpoint: an encoder ranker is BertMeanPoolRanker (10·cos(mean query "
                       "tokens, mean document tokens) + a linear term over the mean of all tokens). "
                       "AutoModelForSequenceClassification, CrossEncoder, vLLM and TEI would load it as a "
                       "BertForSequenceClassification with a fresh random head and score garbage; load it with "
                       "models.ranker.load_ranker (needs models.cross_encoder.BertMeanPoolRanker)."}


def _replace(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an old ``out`` is renamed aside first and removed after, so a reader sees the
    old folder or the new one, never a half-written one (briefly neither)."""
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def model_card(info: dict, contract: ScoringContract) -> str:
    src = info.get("source") or {}
    lineage = "\n".join(f"- {k}: `{v}`" for k, v in src.items() if k != "lineage" and v is not None) or "- (none given)"
    lineage += "".join(f"\n- lineage.{k}: `{v}`" for k, v in (src.get("lineage") or {}).items())
    if not info["standard"]:
        return (f"# Flywheel encoder ranker (NOT a standard checkpoint)\n\n**Warning.** {info['warning']}\n\n"
                "```python\nfrom models.ranker import load_ranker, score_pairs\nmodel, tok, contract = "
                "load_ranker(PATH)\nscores = score_pairs(model, tok, contract, queries, titles, texts)\n```\n\n"
                f"Scoring contract: `{CONTRACT_FILE}` (max_length {contract.max_length}, template "
                f"`{contract.template}`).\n\n## Lineage\n{lineage}\n")
    p = info["prompt"]
    bos = f"`{p['bos_token']}` + " if p["bos_token"] else ""
    doc = (f"the fields {p['doc_fields']} compressed to {p['doc_budget']} tokens (`models.fields.compress_fields`)"
           if p["compression"] == "fields" else f"the document as `{p['document_side']}`")
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [reranker, cross-encoder, flywheel]
---
# Flywheel relevance ranker ({info['class']})

A decoder ranker distilled by the relevance flywheel, exported as a standard `{info['class']}` with one output:
the relevance score `logit("yes") − logit("no")` of the original causal LM at the prompt's last token (the
`score` layer's one row is `W[yes] − W[no]`). Higher is more relevant; the score is a logit, not a probability:
`config.json` sets sentence-transformers' `activation_fn` to Identity, so CrossEncoder returns it unchanged.
The flywheel scores it in `{p['scoring_dtype']}`; the weights are stored as trained (float32).

## Prompt

The model reads `{bos}query side + document side + {p['cue']!r}`. The tokenizer's post-processor adds the
fixed tokens around the pair itself and pads on the right, so feed it the pair (query side, document side):

- query side: `{p['query_side']!r}` with `{{query}}` the query cut to its first {p['max_query_tokens']} tokens
  and decoded;
- document side: {doc}, cut to the tokens left of {p['max_length']} in all.

`flywheel.serving.export.formatted_pair(tokenizer, contract, query, title, text)` builds both; then
`tokenizer(query_side, document_side)` gives exactly the flywheel's token ids — except where the cut splits a
multi-byte character, where the document side ends one character earlier (see its docstring). With
transformers or sentence-transformers the uncut document also works: `truncation="only_second"` cuts it to the
same ids, split characters included, wherever the query side leaves the document room (the tokenizer's
`model_max_length` is {p['max_length']}). Unformatted (query, document) pairs give other scores.

## Use

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
tok = AutoTokenizer.from_pretrained(PATH)
model = AutoModelForSequenceClassification.from_pretrained(PATH).eval()
pairs = [formatted_pair(tok, contract, q, title, text) for q, title, text in rows]
enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
scores = model(**enc).logits[:, 0]

from sentence_transformers import CrossEncoder
scores = CrossEncoder(PATH).predict(pairs)          # raw scores (activation_fn: Identity)
```

- vLLM: `vllm serve PATH --task score` (newer vLLM: `--runner pooling`), then `/score` or `/rerank` with
  `text_1` = query side, `text_2` = document sides (the pair goes through the same tokenizer template). Not
  tested here.
- TEI: `text-embeddings-router --model-id PATH`, `/rerank` with `raw_scores: true` (it applies a sigmoid
  otherwise), if your TEI version serves `{info['class']}`. Not tested here.

Files: `{CONTRACT_FILE}` (the flywheel's scoring contract), `{PROMPT_FILE}` (the prompt above as data).

## Lineage
{lineage}
"""
