"""Checks a LoRA run's outputs with the Python stack: transformers loads RUN/final (the merged
student) unchanged, PEFT loads RUN/final-adapter on the base, and their logits agree (the merge
is the adapter's function). The other way round (an adapter PEFT writes, loaded here) is
tests/fixtures/peft-adapter, made by its make_fixture.py.

    cargo xtask distill --config configs/small-lora.toml
    python3 tests/python/peft_loads_lora_run.py runs/small-lora data/quickstart-test/small/student

Needs torch, transformers, peft and safetensors (checks only; not a dependency of the product).
"""
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

run_dir, base_dir = sys.argv[1], sys.argv[2]

config = AutoModelForCausalLM.from_pretrained(base_dir).config
torch.manual_seed(0)
ids = torch.randint(0, min(config.vocab_size, 250), (2, 24))


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


merged = AutoModelForCausalLM.from_pretrained(f"{run_dir}/final", torch_dtype=torch.float32)
base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
# A run whose recipe froze the base in bf16 trained its adapter on the bf16-rounded base (for hub
# checkpoints, stored in bf16, that is the base itself): PEFT gets the same base.
recipe = json.load(open(f"{run_dir}/recipe.json"))
# Only the weight matrices are frozen in bf16; norms and biases stay f32.
if recipe.get("memory", {}).get("frozen_dtype") == "bfloat16":
    with torch.no_grad():
        for parameter in base.parameters():
            if parameter.dim() == 2:
                parameter.copy_(parameter.to(torch.bfloat16).to(torch.float32))
    print("base matrices rounded to bf16, as the run's memory.frozen_dtype = \"bfloat16\" froze them")
base_logits = logits(base)
adapted = PeftModel.from_pretrained(base, f"{run_dir}/final-adapter")
print(
    f"PEFT loaded {run_dir}/final-adapter: r={adapted.peft_config['default'].r}, "
    f"targets={sorted(adapted.peft_config['default'].target_modules)}"
)
merged_logits, adapted_logits = logits(merged), logits(adapted)
error = (merged_logits - adapted_logits).abs().max().item()
moved = (merged_logits - base_logits).abs().max().item()
scale = adapted_logits.abs().max().item()
# Merging sums W + s A B before the product instead of adding the two products after it: float32
# rounding, relative to the logits' size.
tolerance = 1e-5 * max(1.0, scale)
print(
    f"transformers(final) vs PEFT(base + final-adapter): max |logit diff| = {error:.3e} "
    f"(logits up to {scale:.1f}; tolerance {tolerance:.1e})"
)
print(f"the adapter moves the base's logits by up to {moved:.3e}")
ok = error <= tolerance and moved > 1e-3

sys.exit(0 if ok else 1)
