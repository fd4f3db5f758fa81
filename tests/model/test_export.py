"""`flywheel export`: a tiny Qwen3 decoder ranker, registered in MLflow, exported by alias and by version, scores in
transformers' AutoModelForSequenceClassification and sentence-transformers' CrossEncoder exactly as the flywheel
scores it (float32, batched with padding, documents the contract cuts); the formatted pairs give the flywheel's
token ids; encoders are exported as non-standard, loudly; soft-token rankers and unknown aliases are refused."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flywheel.cli import app as cli
from flywheel.serving.export import export_ranker, formatted_pair, set_pair_template
from flywheel.serving.registry import log_ranker, set_alias
from flywheel.settings import get_paths
from models.contract import doc_strings
from models.decoder import CUE, DecoderRanker, build_tiny_qwen3, decoder_contract, segments, train_bpe_tokenizer
from models.ranker import load_ranker, save_ranker, score_pairs
from tests.dist_jobs import WORDS

NAME = "test-export-ranker"


@pytest.fixture(scope="module")
def ranker(tmp_path_factory, golden):
    """A tiny Qwen3 ranker (max_length 64: most golden documents are cut) registered as NAME v1 @champion."""
    texts = (golden.documents.title + " " + golden.documents.text).tolist()[:400] + golden.queries.text.tolist()
    tok = train_bpe_tokenizer(texts + WORDS * 20, vocab_size=1024)
    contract = decoder_contract(tok, max_length=64)
    model = DecoderRanker(build_tiny_qwen3(tok, "qwen3-tiny", seed=0), contract.yes_token_id, contract.no_token_id)
    path = save_ranker(model, tok, contract, tmp_path_factory.mktemp("ck") / "tiny-qwen3")
    rung = {"rung": "student", "path": str(path), "model_version": "mv-export", "layers": 4,
            "params_non_embedding": 1}
    info = log_ranker(rung, {"ndcg@10": 0.5}, {"judge_version": "judge-x"}, get_paths(), NAME)
    set_alias(NAME, "champion", info["version"], get_paths())
    return {"path": path, "tok": tok, "contract": contract, "run_id": info["run_id"], "version": info["version"]}


@pytest.fixture(scope="module")
def pairs(golden):
    """40 judged golden pairs: the 25 with the longest documents (cut by the contract) and 15 short ones."""
    p = golden.pairs()
    p = p.assign(n=(p.title.str.len() + p.text.str.len())).sort_values(["n", "doc_id"]).drop_duplicates("doc_id")
    sub = np.r_[np.arange(len(p) - 25, len(p)), np.arange(15)]
    return p.iloc[sub].sample(frac=1.0, random_state=0)        # shuffled: batches mix long and short pairs


def _export(args, *extra):
    return CliRunner().invoke(cli, ["export", *args, *extra])


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_exported_checkpoint_scores_like_the_flywheel_in_transformers_and_crossencoder(ranker, pairs, tmp_path):
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    by_alias, by_version = tmp_path / "by-alias", tmp_path / "by-version"
    res = _export([f"{NAME}@champion", "--to", str(by_alias)])
    assert res.exit_code == 0, res.output
    assert "Qwen3ForSequenceClassification" in res.output and "standard" in res.output
    res = _export([f"{NAME}/{ranker['version']}", "--to", str(by_version)])
    assert res.exit_code == 0, res.output
    assert _digest(by_alias) == _digest(by_version)
    config = json.loads((by_alias / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForSequenceClassification"] and len(config["id2label"]) == 1
    card = (by_alias / "README.md").read_text()
    assert ranker["run_id"] in card and f"models:/{NAME}/{ranker['version']}" in card and "judge-x" in card
    prompt = json.loads((by_alias / "flywheel_prompt.json").read_text())
    assert prompt["query_side"].startswith(ranker["contract"].instruction) and "{query}" in prompt["query_side"]

    model, tok, contract = load_ranker(ranker["path"])
    q, t, x = pairs["query"].tolist(), pairs.title.tolist(), pairs.text.tolist()
    want = np.array(score_pairs(model, tok, contract, q, t, x))
    etok = AutoTokenizer.from_pretrained(by_alias)
    assert etok.padding_side == "right" and etok.model_max_length == contract.max_length
    formatted = [formatted_pair(etok, contract, *r) for r in zip(q, t, x)]
    cut = [b != d for (_, b), d in zip(formatted, doc_strings(tok, contract, t, x))]
    assert sum(cut) >= 25 and len(cut) - sum(cut) >= 10               # long documents cut, short ones whole
    for (a, b), r in zip(formatted, zip(q, t, x)):                   # every pair: the flywheel's ids exactly
        p, s = segments(tok, contract, r[0], doc_strings(tok, contract, [r[1]], [r[2]])[0])
        assert etok(a, b)["input_ids"] == p + s and len(p + s) <= contract.max_length

    hf = AutoModelForSequenceClassification.from_pretrained(by_alias, dtype=torch.float32).eval()
    got = []
    for s in range(0, len(formatted), 16):                           # batches of mixed lengths, right-padded
        batch = formatted[s:s + 16]
        enc = etok([a for a, _ in batch], [b for _, b in batch], padding=True, return_tensors="pt")
        assert (enc["attention_mask"] == 0).any()
        with torch.no_grad():
            got += hf(**enc).logits[:, 0].tolist()
    np.testing.assert_allclose(got, want, atol=1e-4)
    ce = CrossEncoder(str(by_version), device="cpu")
    np.testing.assert_allclose(ce.predict(formatted), want, atol=1e-4)      # raw scores: no sigmoid
    assert np.ptp(want) > 1e-2 and (want < 0).any()                   # the pairs differ far beyond the tolerance

    res = _export([NAME, "--to", str(by_alias)])                         # a bare name is @champion
    assert res.exit_code == 2 and "not empty" in res.output
    assert _export([NAME, "--to", str(by_alias), "--overwrite"]).exit_code == 0
    assert _digest(by_alias) == _digest(by_version) and not list(tmp_path.glob(".by-alias*"))


@pytest.mark.parametrize("max_length,bos", [(48, False), (64, True), (96, False), (160, True)])
def test_formatted_pairs_give_the_flywheels_ids_on_every_golden_document(ranker, golden, tmp_path, max_length, bos):
    """Every golden document (most cut): ``tok(query side, document side)`` gives ``segments``'s ids, except where
    the cut splits a multi-byte character — then the ids are the flywheel's less that character's partial byte
    tokens; and the uncut document with ``truncation="only_second"`` gives them exactly wherever the contract
    leaves the document room."""
    from transformers import AutoTokenizer

    tok = ranker["tok"]
    contract = dataclasses.replace(ranker["contract"], max_length=max_length,
                                   bos_token_id=tok.eos_token_id if bos else None)
    exported = AutoTokenizer.from_pretrained(ranker["path"])
    set_pair_template(exported, contract)
    exported.save_pretrained(tmp_path)
    etok = AutoTokenizer.from_pretrained(tmp_path)
    queries, cue = golden.queries.text.tolist(), tok(CUE, add_special_tokens=False)["input_ids"]
    exact = split_char = 0
    for i, r in enumerate(golden.documents.itertuples()):
        q = queries[i % len(queries)]
        doc = doc_strings(tok, contract, [r.title], [r.text])[0]
        p, s = segments(tok, contract, q, doc)
        a, b = formatted_pair(etok, contract, q, r.title, r.text)
        got = etok(a, b)["input_ids"]
        if got == p + s:
            exact += 1
        else:
            n = len(got) - len(p) - len(cue)                             # document tokens it kept
            assert "\ufffd" in tok.decode(s[n:-len(cue)]), (i, got, p + s)   # what it left out: a split character
            assert got == p + s[:n] + cue and len(got) >= len(p + s) - 3
            split_char += 1
        if len(p + s) <= max_length:
            assert etok(a, doc, truncation="only_second")["input_ids"] == p + s
    assert exact + split_char == len(golden.documents) and split_char <= 3


def test_a_cut_inside_a_multibyte_character_ends_the_document_side_one_character_early(ranker):
    tok, contract = ranker["tok"], ranker["contract"]
    seen = 0
    for j in range(1, 9):                                # a 4-byte character is 4 byte tokens: some cut splits one
        text = "budget " * j + "\U0001d11e" * 40
        p, s = segments(tok, contract, "city budget", contract.doc_text("Budget", text))
        kept = s[:-3]
        a, b = formatted_pair(tok, contract, "city budget", "Budget", text)
        ids = tok(a, add_special_tokens=False)["input_ids"] + tok(b, add_special_tokens=False)["input_ids"]
        if tok.decode(kept).endswith("\ufffd"):
            seen += 1
            assert ids == p + kept[:len(ids) - len(p)] and 1 <= len(p + kept) - len(ids) <= 3
            assert not b.endswith("\ufffd") and b.endswith("\U0001d11e")
        else:
            assert ids == p + kept
    assert seen >= 3


def test_encoder_ranker_is_exported_as_itself_and_said_to_be_non_standard(tmp_path):
    from models.contract import ScoringContract
    from models.cross_encoder import build_cross_encoder
    from models.ranker import count_params

    model, tok = build_cross_encoder([0])
    path = save_ranker(model, tok, ScoringContract(max_length=32), tmp_path / "encoder")
    info = export_ranker(path, tmp_path / "out")
    assert info["standard"] is False and "BertMeanPoolRanker" in info["warning"] and "NOT" in info["warning"]
    assert "NOT a standard checkpoint" in (tmp_path / "out" / "README.md").read_text()
    args = (["crime", "budget"], ["Crime", "City budget"], ["incidents by area", "spending"])
    m2, t2, c2 = load_ranker(tmp_path / "out")
    np.testing.assert_allclose(score_pairs(m2, t2, c2, *args), score_pairs(model, tok, c2, *args), atol=1e-5)

    rung = {"rung": "student", "path": str(path), "model_version": "enc", "layers": 1,
            "params_non_embedding": count_params(model)}
    log_ranker(rung, {"ndcg@10": 0.5}, {}, get_paths(), "test-export-encoder")
    res = _export(["test-export-encoder/1", "--to", str(tmp_path / "cli")])
    assert res.exit_code == 0 and "NOT standard" in res.output and "WARNING" in res.output, res.output


def test_soft_token_ranker_is_refused(ranker, tmp_path):
    soft = dataclasses.replace(ranker["contract"], compression="soft", soft_tokens=4, embed_dim=8, embedder="e")
    (tmp_path / "soft").mkdir()
    (tmp_path / "soft" / "scoring_contract.json").write_text(json.dumps(dataclasses.asdict(soft)))
    with pytest.raises(ValueError, match="soft-token ranker"):
        export_ranker(tmp_path / "soft", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_unknown_model_alias_or_version_is_a_clear_error(ranker, tmp_path):
    res = _export([f"{NAME}@nope", "--to", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no alias 'nope'" in res.output and "champion" in res.output, res.output
    res = _export([f"{NAME}/99", "--to", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no version 99" in res.output, res.output
    res = _export(["no-such-ranker", "--to", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no registered model 'no-such-ranker'" in res.output, res.output
    assert not (tmp_path / "x").exists()
