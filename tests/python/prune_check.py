#!/usr/bin/env python3
"""Reference checks of `init-student` (crates/prune) against an independent pruning in PyTorch.

    python tests/python/prune_check.py fixture [--out tests/fixtures/pruned]
    python tests/python/prune_check.py check --student DIR --teacher DIR [--tol 1e-4]

`fixture`: writes the width-and-depth-pruned reference of the parity teacher
  (tests/fixtures/qwen2-parity/teacher) under a fixed plan: `plan.json` (the plan, in the layout
  of importance.json's `plan`) and `reference.safetensors` (the teacher fixture's batch and the
  logits transformers computes for the student cut by that plan). The plan's student has
  head_dim 16 with hidden 48 and 2 heads, so config.json must carry head_dim explicitly.
`check`: DIR is what `cargo xtask init-student` wrote from the Hugging Face folder TEACHER. Cuts
  the teacher by DIR/importance.json's plan in PyTorch, then checks that transformers loads DIR,
  that every tensor equals the cut one exactly, and that the logits agree within --tol.

Prints one line `RESULT {json}`; exits 0 when every check passes, 1 otherwise. Python is a
reference here, never a runtime dependency of the product.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "tests/fixtures/qwen2-parity/teacher"


def load(path: Path) -> Qwen2ForCausalLM:
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                                 attn_implementation="eager")
    return model.eval()


def cut(teacher: Qwen2ForCausalLM, plan: dict) -> Qwen2ForCausalLM:
    """The student `plan` describes, sliced from `teacher`'s state dict by index."""
    tc = teacher.config
    d = tc.head_dim if getattr(tc, "head_dim", None) else tc.hidden_size // tc.num_attention_heads
    ch = torch.tensor(plan["channels"])
    fields = {k: v for k, v in tc.to_dict().items() if k != "layer_types"}
    config = Qwen2Config(**{**fields,
                            "num_hidden_layers": len(plan["layers"]),
                            "num_attention_heads": len(plan["heads"][0]),
                            "intermediate_size": len(plan["neurons"][0]),
                            "hidden_size": len(plan["channels"]),
                            "head_dim": d})
    sd = teacher.state_dict()
    out = {"model.embed_tokens.weight": sd["model.embed_tokens.weight"][:, ch],
           "model.norm.weight": sd["model.norm.weight"][ch]}
    if "lm_head.weight" in sd:
        out["lm_head.weight"] = sd["lm_head.weight"][:, ch]
    for j, layer in enumerate(plan["layers"]):
        t, s = f"model.layers.{layer}.", f"model.layers.{j}."
        rows = torch.tensor([h * d + i for h in plan["heads"][j] for i in range(d)])
        n = torch.tensor(plan["neurons"][j])
        out[s + "self_attn.q_proj.weight"] = sd[t + "self_attn.q_proj.weight"][rows][:, ch]
        out[s + "self_attn.q_proj.bias"] = sd[t + "self_attn.q_proj.bias"][rows]
        for p in ("k_proj", "v_proj"):
            out[s + f"self_attn.{p}.weight"] = sd[t + f"self_attn.{p}.weight"][:, ch]
            out[s + f"self_attn.{p}.bias"] = sd[t + f"self_attn.{p}.bias"]
        out[s + "self_attn.o_proj.weight"] = sd[t + "self_attn.o_proj.weight"][ch][:, rows]
        out[s + "mlp.gate_proj.weight"] = sd[t + "mlp.gate_proj.weight"][n][:, ch]
        out[s + "mlp.up_proj.weight"] = sd[t + "mlp.up_proj.weight"][n][:, ch]
        out[s + "mlp.down_proj.weight"] = sd[t + "mlp.down_proj.weight"][ch][:, n]
        for p in ("input_layernorm", "post_attention_layernorm"):
            out[s + f"{p}.weight"] = sd[t + f"{p}.weight"][ch]
    student = Qwen2ForCausalLM(config)
    student.load_state_dict({k: v.contiguous() for k, v in out.items()}, strict=not config.tie_word_embeddings)
    return student.eval()


def batch():
    reference = load_file(str(TEACHER / "reference.safetensors"))
    return reference["input_ids"], reference["attention_mask"]


def fixture(out: Path) -> dict:
    rng = np.random.default_rng(20261207)
    teacher = load(TEACHER)
    c = teacher.config
    group = c.num_attention_heads // c.num_key_value_heads
    layers = [0, 2, 3]
    plan = {
        "layers": layers,
        # one query head of each key/value group, a different one per layer
        "heads": [sorted(g * group + int(rng.integers(group)) for g in range(c.num_key_value_heads))
                  for _ in layers],
        "neurons": [sorted(rng.choice(c.intermediate_size, 96, replace=False).tolist()) for _ in layers],
        "channels": sorted(rng.choice(c.hidden_size, 48, replace=False).tolist()),
    }
    student = cut(teacher, plan)
    ids, mask = batch()
    with torch.no_grad():
        logits = student(input_ids=ids, attention_mask=mask).logits
    out.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join(f' "{key}": {json.dumps(value)}' for key, value in plan.items())
    (out / "plan.json").write_text("{\n" + lines + "\n}\n")
    save_file({"input_ids": ids, "attention_mask": mask, "logits": logits.contiguous()},
              str(out / "reference.safetensors"))
    return {"ok": True, "plan": {k: (v if k == "layers" else len(v)) for k, v in plan.items()},
            "logits_shape": list(logits.shape)}


def check(student_dir: Path, teacher_dir: Path, tol: float) -> dict:
    plan = json.loads((student_dir / "importance.json").read_text())["plan"]
    expected = cut(load(teacher_dir), plan)
    student = load(student_dir)
    sd, ed = student.state_dict(), expected.state_dict()
    mismatched = [k for k in ed if not torch.equal(sd[k], ed[k])]
    ids, mask = batch()
    ids = ids.clamp(max=student.config.vocab_size - 1)
    with torch.no_grad():
        a = student(input_ids=ids, attention_mask=mask).logits
        b = expected(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    diff = float((a - b).abs()[real].max())
    return {"ok": not mismatched and diff <= tol, "tensors": len(ed), "mismatched": mismatched,
            "max_logit_difference": diff, "config": {k: getattr(student.config, k) for k in (
                "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "intermediate_size")}}


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/pruned")
    c = sub.add_parser("check")
    c.add_argument("--student", type=Path, required=True)
    c.add_argument("--teacher", type=Path, required=True)
    c.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    result = fixture(args.out) if args.mode == "fixture" else check(args.student, args.teacher, args.tol)
    print("RESULT " + json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
