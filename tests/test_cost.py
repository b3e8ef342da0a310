"""Cost accounting: FLOPs closed form, architecture extraction (GGUF, HF config), dollars, tallies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.cost import (
    CostTally,
    ModelArch,
    Prices,
    arch_from_gguf,
    arch_from_hf_config,
    dollars,
    estimate_params_from_hf_config,
    flops_per_generation,
)
from harness.records import Usage
from tests.conftest import need_pack


def _arch(n_params: int = 1000, n_layer: int = 3, d_attn: int = 16) -> ModelArch:
    return ModelArch("llama", n_params, n_params, n_layer, d_attn, d_attn, 10, True)


# ---------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("p,c", [(0, 0), (1, 0), (0, 1), (1, 1), (7, 3), (100, 37), (513, 0)])
def test_flops_closed_form_matches_brute_force(p, c):
    a = _arch(n_params=12_345, n_layer=5, d_attn=48)
    brute = sum(2 * a.n_params + 2 * a.n_layer * t * a.d_attn for t in range(1, p + c + 1))
    assert flops_per_generation(a, p, c) == brute


def test_flops_depends_only_on_total_length_and_grows_quadratically():
    a = _arch(n_params=0, n_layer=1, d_attn=1)
    assert flops_per_generation(a, 10, 0) == flops_per_generation(a, 3, 7) == 10 * 11
    assert flops_per_generation(a, 2000, 0) / flops_per_generation(a, 1000, 0) == pytest.approx(4, rel=1e-3)


# ---------------------------------------------------------------------------- dollars


def test_dollars_simple_numbers():
    p = Prices(input_per_million=2.0, output_per_million=10.0)
    assert dollars(p, 1_000_000, 0) == pytest.approx(2.0)
    assert dollars(p, 0, 500_000) == pytest.approx(5.0)
    assert dollars(p, 250, 100) == pytest.approx((250 * 2 + 100 * 10) / 1e6)
    assert dollars(None, 10**9, 10**9) == 0.0


def test_dollars_accepts_config_price():
    from harness.config import Price

    assert dollars(Price(input_per_million=1.5, output_per_million=3.0), 2_000_000, 1_000_000) == pytest.approx(6.0)


# ---------------------------------------------------------------------------- tally


def test_tally_cached_calls_add_to_uncached_only():
    a = _arch()
    pr = Prices(1.0, 4.0)
    t = CostTally()
    t.add("compressor", "cell-a", Usage(100, 20, 1.5, False), a, pr)
    t.add("compressor", "cell-a", Usage(50, 10, 0.5, True), a, pr)
    t.add("predictor", "cell-a", Usage(30, 5, 0.25, False), None, None)
    t.add("compressor", "cell-b", Usage(7, 3, 0.1, True), a, pr)

    e = t.entries[("compressor", "cell-a")]
    assert (e.calls, e.cached_calls) == (2, 1)
    assert (e.actual.prompt_tokens, e.actual.completion_tokens, e.actual.seconds) == (100, 20, 1.5)
    assert (e.uncached.prompt_tokens, e.uncached.completion_tokens, e.uncached.seconds) == (150, 30, 2.0)
    assert e.actual.flops == flops_per_generation(a, 100, 20)
    assert e.uncached.flops == flops_per_generation(a, 100, 20) + flops_per_generation(a, 50, 10)
    assert e.actual.dollars == pytest.approx(dollars(pr, 100, 20))
    assert e.uncached.dollars == pytest.approx(dollars(pr, 150, 30))

    pred = t.entries[("predictor", "cell-a")]
    assert pred.actual.flops is None and pred.actual.dollars == 0.0 and pred.actual.prompt_tokens == 30

    b = t.entries[("compressor", "cell-b")]
    assert b.actual.prompt_tokens == 0 and b.actual.flops == 0.0 and b.actual.dollars == 0.0
    assert b.uncached.prompt_tokens == 7 and b.uncached.flops > 0

    comp = t.total(role="compressor")
    assert comp.calls == 3 and comp.cached_calls == 2
    assert comp.uncached.prompt_tokens == 157 and comp.actual.prompt_tokens == 100
    cell_a = t.total(cell="cell-a")
    assert cell_a.actual.prompt_tokens == 130 and cell_a.actual.flops is None  # predictor's arch unknown

    d = t.as_dict()
    assert set(d) == {"cell-a", "cell-b"} and set(d["cell-a"]) == {"compressor", "predictor"}
    assert d["cell-a"]["compressor"]["uncached"]["prompt_tokens"] == 150
    assert d["cell-b"]["compressor"]["cached_calls"] == 1


# ---------------------------------------------------------------------------- HF config

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 500,
    "tie_word_embeddings": False,
}


def _transformers_count(cfg: dict) -> int:
    import transformers

    conf = transformers.AutoConfig.for_model(**cfg)
    model = transformers.AutoModelForCausalLM.from_config(conf)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied matrix once


@pytest.mark.parametrize(
    "cfg",
    [
        TINY_LLAMA,
        {**TINY_LLAMA, "tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True, "head_dim": 32},
        {**TINY_LLAMA, "model_type": "qwen2", "tie_word_embeddings": True},
        {**TINY_LLAMA, "model_type": "qwen3", "head_dim": 32},
        {**{k: v for k, v in TINY_LLAMA.items() if k != "tie_word_embeddings"}, "model_type": "gemma3_text",
         "num_key_value_heads": 1, "head_dim": 32},
    ],
    ids=["llama", "llama-tied-bias", "qwen2-tied", "qwen3", "gemma3"],
)
def test_hf_config_param_estimate_matches_transformers(cfg):
    assert estimate_params_from_hf_config(cfg) == _transformers_count(cfg)


def test_arch_from_hf_config_fields_and_nesting():
    n = _transformers_count(TINY_LLAMA)
    a = arch_from_hf_config(TINY_LLAMA)
    assert a.n_params_total == n
    assert a.n_params == n - 500 * 64  # untied: input embedding excluded, output layer kept
    assert (a.family, a.n_layer, a.d_model, a.d_attn, a.vocab_size, a.tied_embeddings) == (
        "llama", 3, 64, 64, 500, False)
    nested = arch_from_hf_config({"model_type": "gemma3", "text_config": {**TINY_LLAMA, "tie_word_embeddings": True}})
    assert nested.tied_embeddings and nested.n_params == nested.n_params_total
    given = arch_from_hf_config({**TINY_LLAMA, "head_dim": 8}, n_params_total=10**6)
    assert given.n_params_total == 10**6 and given.n_params == 10**6 - 500 * 64 and given.d_attn == 32


def test_hf_config_smollm2_matches_published_count():
    # SmolLM2-135M's config.json; HF reports 134,515,008 parameters
    cfg = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
    assert estimate_params_from_hf_config(cfg) == 134_515_008


# ---------------------------------------------------------------------------- GGUF


def _write_gguf(path, *, output: str, d: int = 8, vocab: int = 20, n_layer: int = 2, heads: int = 2) -> None:
    """A tiny F32 llama GGUF; `output` is 'none' (tied), 'copy' (tied, duplicated) or 'own' (untied)."""
    import gguf

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n_layer)
    w.add_embedding_length(d)
    w.add_head_count(heads)
    w.add_head_count_kv(1)
    w.add_feed_forward_length(16)
    embd = rng.standard_normal((vocab, d)).astype(np.float32)
    w.add_tensor("token_embd.weight", embd)
    if output == "copy":
        w.add_tensor("output.weight", embd.copy())
    elif output == "own":
        w.add_tensor("output.weight", rng.standard_normal((vocab, d)).astype(np.float32))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_q.weight", rng.standard_normal((d, d)).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rng.standard_normal((16, d)).astype(np.float32))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("output,tied", [("none", True), ("copy", True), ("own", False)])
def test_arch_from_tiny_gguf(tmp_path, monkeypatch, output, tied):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "m.gguf"
    _write_gguf(path, output=output)
    body = 2 * (8 * 8 + 16 * 8 + 8) + 8
    a = arch_from_gguf(path)
    assert (a.family, a.n_layer, a.d_model, a.d_attn, a.vocab_size) == ("llama", 2, 8, 8, 20)
    assert a.tied_embeddings is tied
    assert a.n_params == body + 20 * 8
    assert a.n_params_total == body + 20 * 8 * (1 if tied else 2)
    memo = list((tmp_path / "cache" / "meta").glob("arch-*.json"))
    assert len(memo) == 1
    assert arch_from_gguf(path) == a  # served from the memo


def test_arch_from_gguf_smollm2():
    a = arch_from_gguf(need_pack("smollm2-135m"))
    assert (a.family, a.n_layer, a.d_model, a.d_attn) == ("llama", 30, 576, 9 * 64)
    assert a.vocab_size == 49152 and a.tied_embeddings
    assert a.n_params_total == pytest.approx(135e6, rel=0.03)
    assert a.n_params == a.n_params_total  # tied: the embedding is the output layer
    assert a.n_params_total == 134_515_008  # matches the HF count exactly
    assert a.size_label == "135M" and math.isclose(a.billions, 0.134515008)


def test_arch_from_gguf_qwen_05b():
    a = arch_from_gguf(need_pack("qwen2.5-coder-0.5b"))
    assert (a.family, a.n_layer, a.d_model, a.d_attn, a.vocab_size) == ("qwen2", 24, 896, 14 * 64, 151936)
    # the GGUF stores the tied embedding twice; it is counted once, as HF does (494,032,768)
    assert a.tied_embeddings
    assert a.n_params_total == pytest.approx(494e6, rel=0.02)
    assert a.n_params_total == 494_032_768
    assert a.n_params == a.n_params_total
