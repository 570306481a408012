"""Checks that Hugging Face transformers loads a model saved by this project unchanged and gives
the logits of the original (the parity fixtures' reference logits).

    cargo run -p qwen2 --example resave -- tests/fixtures/qwen2-parity/teacher /tmp/resaved f32
    python3 tests/python/transformers_loads_saved_model.py /tmp/resaved tests/fixtures/qwen2-parity/teacher/reference.safetensors

Needs torch, transformers and safetensors (not a dependency of the product; CI has no torch).
"""
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

saved_dir, reference_path = sys.argv[1], sys.argv[2]
tolerance = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
reference = load_file(reference_path)
model = AutoModelForCausalLM.from_pretrained(saved_dir, torch_dtype=torch.float32)
model.eval()
with torch.no_grad():
    logits = model(
        input_ids=reference["input_ids"], attention_mask=reference["attention_mask"]
    ).logits
real = reference["attention_mask"].bool()
error = (logits - reference["logits"]).abs()[real].max().item()
print(f"{saved_dir}: {type(model).__name__} loaded; logits max |error| at real positions = {error:.3e}")
sys.exit(0 if error <= tolerance else 1)
