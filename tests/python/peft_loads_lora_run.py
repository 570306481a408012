"""Checks a LoRA run's outputs with the Python stack, both ways:

1. transformers loads RUN/final (the merged student) unchanged, and PEFT loads RUN/final-adapter
   on the base; their logits agree (the merge is the adapter's function).
2. An adapter written by PEFT itself (random, nonzero lora_B) is saved with its logits on fixed
   ids, for the Rust side to load (`cargo xtask generate --adapter`, `qwen2::load_adapter`):
   written to OUT_DIR when given.

    cargo xtask distill --config configs/small-lora.toml
    python3 tests/python/peft_loads_lora_run.py runs/small-lora data/quickstart-test/small/student [OUT_DIR]

Needs torch, transformers, peft and safetensors (checks only; not a dependency of the product).
"""
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

run_dir, base_dir = sys.argv[1], sys.argv[2]
out_dir = sys.argv[3] if len(sys.argv) > 3 else None
tolerance = 1e-4

config = AutoModelForCausalLM.from_pretrained(base_dir).config
torch.manual_seed(0)
ids = torch.randint(0, min(config.vocab_size, 250), (2, 24))


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


merged = AutoModelForCausalLM.from_pretrained(f"{run_dir}/final", torch_dtype=torch.float32)
base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
base_logits = logits(base)
adapted = PeftModel.from_pretrained(base, f"{run_dir}/final-adapter")
print(
    f"PEFT loaded {run_dir}/final-adapter: r={adapted.peft_config['default'].r}, "
    f"targets={sorted(adapted.peft_config['default'].target_modules)}"
)
merged_logits, adapted_logits = logits(merged), logits(adapted)
error = (merged_logits - adapted_logits).abs().max().item()
moved = (merged_logits - base_logits).abs().max().item()
print(f"transformers(final) vs PEFT(base + final-adapter): max |logit diff| = {error:.3e}")
print(f"the adapter moves the base's logits by up to {moved:.3e}")
ok = error <= tolerance and moved > 1e-3

if out_dir:
    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    peft_config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"]
    )
    model = get_peft_model(base, peft_config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
    model.save_pretrained(out_dir)
    save_file(
        {"input_ids": ids.contiguous(), "logits": logits(model).contiguous()},
        f"{out_dir}/peft_reference.safetensors",
    )
    print(f"wrote a PEFT adapter and its logits to {out_dir}")

sys.exit(0 if ok else 1)
