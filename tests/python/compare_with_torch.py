#!/usr/bin/env python3
"""Runs this project's benchmarks and PyTorch's (bench_torch.py, the same work written as a
PyTorch + transformers user would) one after the other on the same cores, in one sitting, and
prints one table. Needs a Python with torch and transformers (`pip install torch transformers`);
the toolkit itself never needs Python.

  python3 tests/python/compare_with_torch.py --python /path/to/venv/bin/python [--backends flex,ndarray]
      [--shape qwen2.5-0.5b] [--seq-len 256] [--skip-train] [--json out.json] [--xtask BINARY]
      [--lora-rank 16 --frozen-dtype bfloat16 [--frozen-products bfloat16]] [--seed-teacher]
      [--rounds 3]

With --lora-rank both sides train a LoRA student (PEFT on PyTorch's side), frozen weights in
--frozen-dtype (PyTorch then also computes in it); --seed-teacher makes the teacher the seed's
DeepSeek-R1-Distill-Qwen-1.5B shape (untied) for --shape qwen2.5-1.5b.

With --rounds N every PyTorch / ours pair runs N times, alternating (PyTorch, ours, PyTorch,
ours, ...), and each ratio is taken within its round: a shared VM's speed drifts by tens of
percent within minutes, so one pair can land in two different speeds. The summary gives every
round's ratio and their median.
"""
import statistics
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

TORCH_SHAPES = {
    "qwen2.5-0.5b": "--hidden 896 --layers 24 --heads 14 --kv-heads 2 --intermediate 4864 --vocab 151936 --teacher-tie",
    "qwen2.5-1.5b": "--hidden 1536 --layers 28 --heads 12 --kv-heads 2 --intermediate 8960 --vocab 151936 --teacher-tie",
    "tiny": "--hidden 64 --layers 4 --heads 4 --kv-heads 2 --intermediate 160 --vocab 512 --teacher-tie",
}


def last_json(text, prefix=""):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if prefix and line.startswith(prefix):
            return json.loads(line[len(prefix):])
        if not prefix and line.startswith("{") and line.endswith("}"):
            return json.loads(line)
    raise SystemExit("no JSON result in:\n" + text[-3000:])


def run(command):
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    sys.stderr.write(done.stderr[-2000:])
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-3000:]}")
    return done.stdout


XTASK = ["cargo", "xtask"]


def ours(*args):
    return last_json(run([*XTASK, "bench", *args]))


def torch(python, shape, *args):
    return last_json(run([python, os.path.join(HERE, "bench_torch.py"), *TORCH_SHAPES[shape].split(), *args]), "RESULT ")


NUMPY_MATMUL = r"""
import json, statistics, sys, time
import numpy as np
shapes = json.loads(sys.argv[1])
out = []
for m, k, n in shapes:
    a = np.random.rand(m, k).astype(np.float32)
    b = np.random.rand(k, n).astype(np.float32)
    times = []
    for i in range(6):
        t = time.perf_counter(); c = a @ b; e = time.perf_counter() - t
        if i: times.append(e)
    med = statistics.median(times)
    out.append({"m": m, "k": k, "n": n, "seconds": med, "gflops": 2 * m * k * n / med / 1e9})
print(json.dumps({"numpy": np.__version__, "shapes": out}))
"""


def numpy_matmul(python, shapes, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(f"$ {python} -c <numpy matmul>", file=sys.stderr, flush=True)
    done = subprocess.run([python, "-c", NUMPY_MATMUL, json.dumps(shapes)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_round(a, backends, round_index, results):
    """One PyTorch / ours pair per measure: the update (unless --skip-train), the forward pass
    and greedy generation. Returns the table's rows."""
    rows = []
    if not a.skip_train:
        lora = ["--lora-rank", str(a.lora_rank), "--frozen-dtype", a.frozen_dtype]
        torch_args = ["--batch", "1", "--seq-len", str(a.seq_len), "--steps", str(a.steps), "--warmup", str(a.warmup), *lora]
        if a.seed_teacher:
            # The same shapes with the teacher untied (bench_torch's default).
            shape = TORCH_SHAPES[a.shape].replace("--teacher-tie", "").split()
            t = last_json(run([a.python, os.path.join(HERE, "bench_torch.py"), *shape, *torch_args, "--max-rss-gib", "30"]), "RESULT ")
        else:
            t = torch(a.python, a.shape, *torch_args)
        results["torch"].setdefault("train", []).append(t)
        rows.append((round_index, "distill update 1x%d" % a.seq_len, "pytorch", t.get("tokens_per_s_median", t.get("tokens_per_s")), "tokens/s", t.get("peak_rss_gib")))
        for backend in backends:
            teacher = ["--teacher-shape", "deepseek-r1-distill-qwen-1.5b"] if a.seed_teacher else []
            r = ours("distill-step", "--shape", a.shape, *teacher, "--seq-len", str(a.seq_len), "--steps", str(a.steps), "--warmup", str(a.warmup), *lora, "--frozen-products", a.frozen_products, "--backend", backend)
            results["ours"].setdefault("train-" + backend, []).append(r)
            rows.append((round_index, "distill update 1x%d" % a.seq_len, backend, r["tokens_per_second"], "tokens/s", (r["peak_rss_bytes"] or 0) / 2**30))

    t = torch(a.python, a.shape, "--infer", "--batch", "1", "--seq-len", str(a.seq_len), "--prompt-len", str(a.prompt_len), "--gen-tokens", str(a.new_tokens), "--steps", "3")
    results["torch"].setdefault("infer", []).append(t)
    rows.append((round_index, "forward 1x%d" % a.seq_len, "pytorch", t["forward_tokens_per_s"], "tokens/s", t.get("peak_rss_gib")))
    rows.append((round_index, "greedy %d+%d (with prefill)" % (a.prompt_len, a.new_tokens), "pytorch", t["gen_tokens_per_s"], "tokens/s", t.get("peak_rss_gib")))
    for backend in backends:
        r = ours("infer", "--shape", a.shape, "--seq-len", str(a.seq_len), "--new-tokens", "1", "--backend", backend)
        results["ours"].setdefault("forward-" + backend, []).append(r)
        rows.append((round_index, "forward 1x%d" % a.seq_len, backend, r["forward_tokens_per_second"], "tokens/s", r["peak_rss_bytes"] / 2**30))
        g = ours("infer", "--shape", a.shape, "--seq-len", str(a.prompt_len), "--new-tokens", str(a.new_tokens), "--repeats", "1", "--backend", backend)
        results["ours"].setdefault("generate-" + backend, []).append(g)
        rows.append((round_index, "greedy %d+%d (with prefill)" % (a.prompt_len, a.new_tokens), backend, g["generate_tokens_per_second_with_prefill"], "tokens/s", g["peak_rss_bytes"] / 2**30))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", required=True, help="a Python with torch and transformers")
    ap.add_argument("--backends", default="flex,ndarray")
    ap.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(TORCH_SHAPES))
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed updates, both sides (the median is compared)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed updates first, both sides")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--xtask", help="a built xtask binary to run instead of `cargo xtask`")
    ap.add_argument("--lora-rank", type=int, default=0, help="LoRA students of this rank (0: full-parameter)")
    ap.add_argument("--frozen-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--frozen-products", default="float32", choices=["float32", "bfloat16"],
                    help="our products with bf16 frozen matrices (PyTorch computes in --frozen-dtype)")
    ap.add_argument("--seed-teacher", action="store_true", help="the seed's untied teacher shape (with --shape qwen2.5-1.5b)")
    ap.add_argument("--rounds", type=int, default=1, help="run the PyTorch / ours pairs this many times, alternating; ratios are taken within a round")
    a = ap.parse_args()
    if a.seed_teacher and a.shape != "qwen2.5-1.5b":
        raise SystemExit("--seed-teacher goes with --shape qwen2.5-1.5b")
    if a.xtask:
        XTASK[:] = [a.xtask]
    backends = [b for b in a.backends.split(",") if b]
    matmul = {b: ours("matmul", "--backend", b) for b in backends}
    shapes = [[r["m"], r["k"], r["n"]] for r in matmul[backends[0]]["shapes"]]
    numpy = numpy_matmul(a.python, shapes, 2)
    rows = []  # (round, measure, system, value, unit, peak GiB)
    results = {"ours": {}, "torch": {}, "rounds": []}
    for round_index in range(max(1, a.rounds)):
        rows.extend(one_round(a, backends, round_index, results))

    results["ours"]["matmul"] = matmul
    results["numpy"] = numpy
    print(f"\n{'f32 matmul m x k x n':<22} {'numpy':>8} " + " ".join(f"{b:>8}" for b in backends) + "  (GFLOP/s; ratio to numpy)")
    for i, (m, k, n) in enumerate(shapes):
        base = numpy["shapes"][i]["gflops"]
        cells = " ".join(f"{matmul[b]['shapes'][i]['gflops']:>5.1f}/{matmul[b]['shapes'][i]['gflops'] / base:.2f}" for b in backends)
        print(f"{m:>4} x {k:>5} x {n:>6}   {base:>8.1f} {cells}")
    print(f"\n{'round':>5} {'measure':<30} {'system':<8} {'value':>9} {'unit':<9} {'vs pytorch':>10} {'peak RSS':>9}")
    baseline = {}
    ratios = {}
    for round_index, measure, system, value, unit, peak in rows:
        if system == "pytorch":
            baseline[(round_index, measure)] = value
        base = baseline.get((round_index, measure))
        ratio = value / base if base else float("nan")
        if system != "pytorch" and base:
            ratios.setdefault((measure, system), []).append(ratio)
        peak_text = f"{peak:.2f} GiB" if peak is not None else "-"
        print(f"{round_index + 1:>5} {measure:<30} {system:<8} {value:>9.2f} {unit:<9} {ratio:>9.2f}x {peak_text:>9}")
    if a.rounds > 1:
        print(f"\n{'measure':<30} {'system':<8} {'median ratio':>12}  every round")
        for (measure, system), values in ratios.items():
            each = " ".join(f"{r:.2f}" for r in values)
            print(f"{measure:<30} {system:<8} {statistics.median(values):>11.2f}x  {each}")
        results["ratios"] = {f"{m} / {s}": v for (m, s), v in ratios.items()}
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
