#!/usr/bin/env python3
"""Reference checks of our GGUF import/export against transformers, gguf-py and llama.cpp.

    python tests/python/gguf_check.py import --gguf FILE.gguf --dir HF_DIR [--tol 1e-3]
    python tests/python/gguf_check.py export --source HF_DIR --gguf FILE.gguf [--tol 1e-3]
        [--min-argmax-agree 1.0] [--min-llama-agree N] [--no-llama-cpp]

`import`: HF_DIR is what `import-gguf` wrote (config.json, model.safetensors, tokenizer files).
  transformers loads FILE (gguf_file=, float32) and HF_DIR (float32), both run one fixed prompt
  (~32 tokens, tokenized with the GGUF's own tokenizer); reports the max |logit difference|, whether
  the argmax agrees at every position, the config fields that differ, and (when HF_DIR has tokenizer
  files) whether HF_DIR's tokenizer encodes the prompt and a few tricky strings to the same ids.
`export`: HF_DIR is the source checkpoint and FILE what our exporter wrote. (1) gguf-py reads FILE:
  architecture, tensor count and types, tensor names against llama.cpp's qwen2 names, shapes and
  metadata against HF_DIR/config.json; (2) transformers loads FILE and HF_DIR, logits compared as
  above; (3) if llama_cpp imports, llama.cpp loads FILE and greedy-decodes 24 tokens from the prompt,
  compared with transformers' greedy tokens from HF_DIR (identical leading tokens, and llama.cpp's
  prompt logits against transformers').

Prints one line `RESULT {json}` and exits 0 when every enforced check passes, 1 otherwise
(2 on a usage error). Python is a reference here, never a runtime dependency of the product.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

PROMPT = ('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n'
          '        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\nprint(fibonacci(10))\n')
PROMPT_TOKENS = 32
GEN_TOKENS = 24
TRICKY = ["Hello world, \u4f60\u597d", "  two  spaces\tand tab\n\nnewlines",
          "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>", "digits 1234567 3.14",
          "emoji \U0001F680\U0001F44D\U0001F3FD", " = Valkyria Chronicles III = "]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def load_hf(path: Path, gguf_file: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    if gguf_file:
        kw["gguf_file"] = gguf_file
    m = AutoModelForCausalLM.from_pretrained(str(path), **kw)
    m.eval()
    return m


def load_gguf_tokenizer(gguf: Path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def has_tokenizer_files(d: Path) -> bool:
    return any((d / f).is_file() for f in TOKENIZER_FILES)


def prompt_ids(gguf: Path, hf_dir: Path, vocab_size: int, out: dict):
    """ids of the fixed prompt: GGUF tokenizer, else HF_DIR's tokenizer, else fixed pseudo-random ids."""
    tok = None
    try:
        tok = load_gguf_tokenizer(gguf)
        out["prompt_tokenizer"] = "gguf"
    except Exception as e:  # noqa: BLE001
        out["gguf_tokenizer_error"] = f"{type(e).__name__}: {e}"[:300]
        if has_tokenizer_files(hf_dir):
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(str(hf_dir))
            out["prompt_tokenizer"] = "hf_dir"
    if tok is not None:
        ids = tok(PROMPT, add_special_tokens=True)["input_ids"][:PROMPT_TOKENS]
    else:
        rng = np.random.default_rng(1234)
        ids = rng.integers(0, min(vocab_size, 480), size=PROMPT_TOKENS).tolist()
        out["prompt_tokenizer"] = "none (fixed pseudo-random ids, seed 1234)"
    out["prompt_ids"] = ids
    return ids, tok


def compare_logits(m_a, m_b, ids, tol, out: dict, label="gguf_vs_dir", min_argmax=1.0):
    import torch
    x = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        la = m_a(x).logits.float().numpy()[0]
        lb = m_b(x).logits.float().numpy()[0]
    if la.shape != lb.shape:
        out[label] = {"ok": False, "error": f"logit shapes differ {la.shape} vs {lb.shape}"}
        return False, la, lb
    diff = float(np.abs(la - lb).max())
    agree = la.argmax(-1) == lb.argmax(-1)
    ok = diff <= tol and float(agree.mean()) >= min_argmax
    out[label] = {"ok": ok, "max_abs_logit_diff": diff, "tol": tol,
                  "argmax_agrees_everywhere": bool(agree.all()),
                  "argmax_agreement": float(agree.mean()), "min_argmax_agreement": min_argmax,
                  "argmax_disagree_positions": np.nonzero(~agree)[0].tolist(),
                  "n_positions": int(la.shape[0]), "vocab": int(la.shape[1])}
    return ok, la, lb


CONFIG_FIELDS = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "intermediate_size", "rms_norm_eps", "rope_theta",
                 "max_position_embeddings", "tie_word_embeddings"]


def cfg_get(cfg, k):
    if k == "rope_theta":
        v = getattr(cfg, "rope_theta", None)
        if v is None:
            rp = getattr(cfg, "rope_parameters", None) or {}
            v = rp.get("rope_theta")
        return v
    return getattr(cfg, k, None)


def compare_configs(ca, cb, out: dict):
    diffs = {}
    for k in CONFIG_FIELDS:
        a, b = cfg_get(ca, k), cfg_get(cb, k)
        if isinstance(a, float) or isinstance(b, float):
            same = a is not None and b is not None and abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
        else:
            same = a == b
        if not same:
            diffs[k] = {"gguf": a, "dir": b}
    out["config_differences"] = diffs
    # tie_word_embeddings may legitimately differ: a GGUF that stores output.weight loads untied
    hard = {k: v for k, v in diffs.items() if k not in ("tie_word_embeddings", "max_position_embeddings")}
    return not hard


def compare_tokenizers(gguf_tok, hf_dir: Path, out: dict):
    if not has_tokenizer_files(hf_dir):
        out["tokenizer_check"] = {"ok": None, "skipped": "no tokenizer files in DIR"}
        return True
    if gguf_tok is None:
        out["tokenizer_check"] = {"ok": None, "skipped": "the GGUF tokenizer could not be built"}
        return True
    from transformers import AutoTokenizer
    try:
        dtok = AutoTokenizer.from_pretrained(str(hf_dir))
    except Exception as e:  # noqa: BLE001
        out["tokenizer_check"] = {"ok": False, "error": f"DIR tokenizer failed to load: {type(e).__name__}: {e}"[:300]}
        return False
    res = {"texts": []}
    ok = True
    for t in [PROMPT] + TRICKY:
        a = gguf_tok(t, add_special_tokens=True)["input_ids"]
        b = dtok(t, add_special_tokens=True)["input_ids"]
        same = a == b
        ok &= same
        res["texts"].append({"text": t[:40], "same": same, **({} if same else {"gguf": a, "dir": b})})
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        a, b = getattr(gguf_tok, name), getattr(dtok, name)
        res[name] = {"gguf": a, "dir": b}
        if a != b:
            res.setdefault("special_id_differences", []).append(name)
    res["ok"] = ok
    out["tokenizer_check"] = res
    return ok


# ---------------------------------------------------------------------------------------------

QWEN2_LAYER_TENSORS = {
    "attn_norm.weight": lambda c: [c.hidden_size],
    "attn_q.weight": lambda c: [c.hidden_size, c.num_attention_heads * hd(c)],
    "attn_q.bias": lambda c: [c.num_attention_heads * hd(c)],
    "attn_k.weight": lambda c: [c.hidden_size, c.num_key_value_heads * hd(c)],
    "attn_k.bias": lambda c: [c.num_key_value_heads * hd(c)],
    "attn_v.weight": lambda c: [c.hidden_size, c.num_key_value_heads * hd(c)],
    "attn_v.bias": lambda c: [c.num_key_value_heads * hd(c)],
    "attn_output.weight": lambda c: [c.num_attention_heads * hd(c), c.hidden_size],
    "ffn_norm.weight": lambda c: [c.hidden_size],
    "ffn_gate.weight": lambda c: [c.hidden_size, c.intermediate_size],
    "ffn_up.weight": lambda c: [c.hidden_size, c.intermediate_size],
    "ffn_down.weight": lambda c: [c.intermediate_size, c.hidden_size],
}


def hd(c):
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def inspect_gguf(path: Path, cfg, out: dict) -> bool:
    import gguf
    r = gguf.GGUFReader(str(path))
    f = r.fields

    def val(k):
        return f[k].contents() if k in f else None

    arch = val("general.architecture")
    info = {"architecture": arch, "tensor_count": len(r.tensors),
            "gguf_version": int(val("GGUF.version")), "file_type": val("general.file_type"),
            "tensor_types": {}, "alignment": val("general.alignment") or 32}
    for t in r.tensors:
        info["tensor_types"][t.tensor_type.name] = info["tensor_types"].get(t.tensor_type.name, 0) + 1
    problems = []
    if arch != "qwen2":
        problems.append(f"general.architecture is {arch!r}, not 'qwen2'")
    expected = {"token_embd.weight": [cfg.hidden_size, cfg.vocab_size],
                "output_norm.weight": [cfg.hidden_size]}
    for i in range(cfg.num_hidden_layers):
        for suffix, shp in QWEN2_LAYER_TENSORS.items():
            expected[f"blk.{i}.{suffix}"] = shp(cfg)
    optional = {"output.weight": [cfg.hidden_size, cfg.vocab_size]}
    names = {t.name: [int(x) for x in t.shape] for t in r.tensors}
    missing = sorted(set(expected) - set(names))
    unexpected = sorted(set(names) - set(expected) - set(optional))
    bad_shapes = {n: {"gguf_ne": names[n], "expected_ne": s}
                  for n, s in {**expected, **optional}.items() if n in names and names[n] != s}
    info["has_output_weight"] = "output.weight" in names
    if not cfg.tie_word_embeddings and "output.weight" not in names:
        problems.append("untied source but no output.weight")
    if missing:
        problems.append(f"missing tensors: {missing[:10]}{'...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors (not llama.cpp qwen2 names): {unexpected[:10]}")
    if bad_shapes:
        problems.append(f"shape mismatches: {list(bad_shapes)[:10]}")
    info["bad_shapes"] = bad_shapes
    for n in names:
        if n.endswith("_norm.weight") or n.endswith(".bias"):
            tt = next(t.tensor_type.name for t in r.tensors if t.name == n)
            if tt != "F32":
                problems.append(f"{n} is {tt}; llama.cpp keeps norms and biases F32")
    rope = cfg_get(cfg, "rope_theta")
    meta_expect = {
        "qwen2.block_count": cfg.num_hidden_layers, "qwen2.embedding_length": cfg.hidden_size,
        "qwen2.feed_forward_length": cfg.intermediate_size,
        "qwen2.attention.head_count": cfg.num_attention_heads,
        "qwen2.attention.head_count_kv": cfg.num_key_value_heads,
        "qwen2.rope.freq_base": rope, "qwen2.attention.layer_norm_rms_epsilon": cfg.rms_norm_eps,
        "qwen2.context_length": cfg.max_position_embeddings,
    }
    meta = {}
    for k, want in meta_expect.items():
        got = val(k)
        if isinstance(want, float) or isinstance(got, float):
            same = got is not None and want is not None and abs(float(got) - float(want)) <= 1e-6 * max(1.0, abs(float(want)))
        else:
            same = got == want
        meta[k] = {"gguf": got, "config": want, "ok": same}
        if not same:
            problems.append(f"{k}: gguf {got} vs config {want}")
    info["metadata"] = meta
    info["has_tokenizer"] = "tokenizer.ggml.tokens" in f
    if info["has_tokenizer"]:
        info["tokenizer"] = {"model": val("tokenizer.ggml.model"), "pre": val("tokenizer.ggml.pre"),
                             "n_tokens": len(f["tokenizer.ggml.tokens"].data),
                             "n_merges": len(f["tokenizer.ggml.merges"].data) if "tokenizer.ggml.merges" in f else 0,
                             "bos": val("tokenizer.ggml.bos_token_id"), "eos": val("tokenizer.ggml.eos_token_id"),
                             "pad": val("tokenizer.ggml.padding_token_id")}
        if info["tokenizer"]["n_tokens"] != cfg.vocab_size:
            problems.append(f"tokenizer.ggml.tokens has {info['tokenizer']['n_tokens']} entries, "
                            f"config vocab_size {cfg.vocab_size} (transformers takes vocab_size from it)")
    else:
        problems.append("no tokenizer.ggml.* metadata (transformers and llama.cpp need it)")
    info["problems"] = problems
    info["ok"] = not problems
    out["gguf_file"] = info
    return not problems


def hf_greedy(model, ids, n):
    import torch
    x = torch.tensor([ids], dtype=torch.long)
    out, past = [], None
    with torch.no_grad():
        for _ in range(n):
            o = model(x, past_key_values=past, use_cache=True)
            past = o.past_key_values
            nxt = int(o.logits[0, -1].argmax())
            out.append(nxt)
            x = torch.tensor([[nxt]], dtype=torch.long)
    return out


def llama_cpp_check(path: Path, ids, hf_tokens, hf_prompt_logits, out: dict, min_agree):
    res = {}
    out["llama_cpp"] = res
    try:
        import llama_cpp
        res["version"] = getattr(llama_cpp, "__version__", None)
    except Exception as e:  # noqa: BLE001
        res["status"] = f"not available ({type(e).__name__}: {e})"[:300]
        return min_agree is None
    try:
        llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=256, verbose=False, seed=0)
    except Exception as e:  # noqa: BLE001
        res["status"] = "load_failed"
        res["error"] = f"{type(e).__name__}: {e}"[:500]
        return min_agree is None
    try:
        llm.reset()
        llm.eval(list(ids))
        scores = np.array(llm.scores[: len(ids)], dtype=np.float32)
        if hf_prompt_logits is not None and scores.shape == hf_prompt_logits.shape:
            res["prompt_max_abs_logit_diff_vs_hf_dir"] = float(np.abs(scores - hf_prompt_logits).max())
            res["prompt_argmax_agreement_vs_hf_dir"] = float((scores.argmax(-1) == hf_prompt_logits.argmax(-1)).mean())
        gen = []
        for _ in range(GEN_TOKENS):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            gen.append(nxt)
            llm.eval([nxt])
        lead = 0
        for a, b in zip(gen, hf_tokens):
            if a != b:
                break
            lead += 1
        res.update({"status": "ok", "greedy_tokens": gen, "hf_dir_greedy_tokens": hf_tokens,
                    "identical_leading_tokens": lead, "of": GEN_TOKENS})
        try:
            res["greedy_text"] = llm.detokenize(gen).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001
            pass
    except Exception as e:  # noqa: BLE001
        res["status"] = "run_failed"
        res["error"] = f"{type(e).__name__}: {e}"[:500]
        return min_agree is None
    return min_agree is None or lead >= min_agree


# ---------------------------------------------------------------------------------------------

def cmd_import(a) -> dict:
    out = {"command": "import", "gguf": str(a.gguf), "dir": str(a.dir)}
    m_g = load_hf(a.gguf.parent, a.gguf.name)
    m_d = load_hf(a.dir)
    cfg_ok = compare_configs(m_g.config, m_d.config, out)
    ids, tok = prompt_ids(a.gguf, a.dir, m_g.config.vocab_size, out)
    log_ok, _, _ = compare_logits(m_g, m_d, ids, a.tol, out, min_argmax=a.min_argmax_agree)
    tok_ok = compare_tokenizers(tok, a.dir, out)
    out["ok"] = bool(cfg_ok and log_ok and tok_ok)
    return out


def cmd_export(a) -> dict:
    from transformers import AutoConfig
    out = {"command": "export", "gguf": str(a.gguf), "source": str(a.source)}
    cfg = AutoConfig.from_pretrained(str(a.source))
    file_ok = inspect_gguf(a.gguf, cfg, out)
    m_d = load_hf(a.source)
    try:
        m_g = load_hf(a.gguf.parent, a.gguf.name)
    except Exception as e:  # noqa: BLE001
        m_g = None
        out["transformers_gguf_load_error"] = f"{type(e).__name__}: {e}"[:500]
    ids, tok = prompt_ids(a.gguf, a.source, cfg.vocab_size, out)
    if m_g is not None:
        cfg_ok = compare_configs(m_g.config, m_d.config, out)
        log_ok, _, l_dir = compare_logits(m_g, m_d, ids, a.tol, out, min_argmax=a.min_argmax_agree)
    else:
        cfg_ok, log_ok = False, False
        import torch
        with torch.no_grad():
            l_dir = m_d(torch.tensor([ids])).logits.float().numpy()[0]
    tok_ok = compare_tokenizers(tok, a.source, out)
    hf_tokens = hf_greedy(m_d, ids, GEN_TOKENS)
    out["hf_dir_greedy_tokens"] = hf_tokens
    if m_g is not None:
        g_tokens = hf_greedy(m_g, ids, GEN_TOKENS)
        lead = next((i for i, (x, y) in enumerate(zip(g_tokens, hf_tokens)) if x != y), GEN_TOKENS)
        out["hf_gguf_greedy_identical_leading_tokens"] = lead
    if a.no_llama_cpp:
        out["llama_cpp"] = {"status": "skipped (--no-llama-cpp)"}
        ll_ok = True
    else:
        ll_ok = llama_cpp_check(a.gguf, ids, hf_tokens, l_dir, out, a.min_llama_agree)
    out["ok"] = bool(file_ok and cfg_ok and log_ok and tok_ok and ll_ok)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("import", help="check an HF folder written from a GGUF against that GGUF")
    pi.add_argument("--gguf", type=Path, required=True)
    pi.add_argument("--dir", type=Path, required=True)
    pi.add_argument("--tol", type=float, default=1e-3, help="max |logit difference| (default 1e-3)")
    pi.add_argument("--min-argmax-agree", type=float, default=1.0,
                    help="fraction of prompt positions whose argmax must agree (default 1.0)")
    pe = sub.add_parser("export", help="check a GGUF written from an HF folder against that folder")
    pe.add_argument("--source", type=Path, required=True)
    pe.add_argument("--gguf", type=Path, required=True)
    pe.add_argument("--tol", type=float, default=1e-3, help="max |logit difference| (default 1e-3; "
                    "raise it for quantized exports)")
    pe.add_argument("--min-argmax-agree", type=float, default=1.0,
                    help="fraction of prompt positions whose argmax must agree (default 1.0)")
    pe.add_argument("--min-llama-agree", type=int, default=None,
                    help="fail unless llama.cpp loads the file and its first N greedy tokens equal "
                         "transformers' (default: report only)")
    pe.add_argument("--no-llama-cpp", action="store_true")
    a = ap.parse_args()
    for p in [getattr(a, "gguf", None)]:
        if p is not None and not p.is_file():
            print("RESULT " + json.dumps({"ok": False, "error": f"no such file {p}"}))
            return 2
    a.gguf = a.gguf.resolve()
    try:
        import torch
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        out = cmd_import(a) if a.cmd == "import" else cmd_export(a)
    except Exception as e:  # noqa: BLE001
        out = {"ok": False, "command": a.cmd, "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc()[-2000:]}
    print("RESULT " + json.dumps(out, ensure_ascii=False, default=str))
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
