"""Worker memory and speed at LLM scale: synthetic Llama-shaped bf16 seeds of 1.1B, 3B and 7B.

``make`` writes three seed folders (a base and two "fine-tunes": the base plus seeded noise)
of random bf16 weights straight to sharded safetensors, tensor by tensor (the model is never
whole in memory), with a config.json, a character tokenizer made here (no hub) and a tiny
task. ``measure`` sets up one worker (a FitnessHost over the causal-LM plug-in, as a Ray
actor does) in a fresh process for each space and reports:

* ``setup_s``: the worker's set-up (model built empty in bf16, seeds memory-mapped);
* ``load_s``: median time to write one candidate into the resident model (M2N2 lineage: a
  child of two crossovers; CMA-ES: a TIES recipe with density 0.55);
* ``floor_s``: in the same process, reading every tensor of the K seeds once plus writing one
  model, both as plain ``copy_`` calls (the least any load must do); ``read_s`` is its first
  part alone (the target for set-up);
* ``forward_s``: median time of ``score_loaded`` on the tiny task;
* ``peak_rss_gb`` (VmHWM) and ``private_gb``: the largest anonymous (non-file) RSS seen by a
  sampler thread every 5 ms over set-up and loads, against ``model_gb``, the resident bytes.

    python bench/llm/scale.py make /work/scratch/i13a/llama-1b --size 1b
    flock /tmp/evomerge-bigmem.lock flock /tmp/evomerge-timing.lock \\
        python bench/llm/scale.py measure /work/scratch/i13a/llama-1b --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = f"{ROOT}/fitness/causal_lm.py:CausalLM"
SIZES = {  # TinyLlama's shape, and a 3B of the same family
    "1b": dict(
        hidden_size=2048,
        num_hidden_layers=22,
        intermediate_size=5632,
        num_attention_heads=32,
        num_key_value_heads=4,
    ),
    "3b": dict(
        hidden_size=3072,
        num_hidden_layers=26,
        intermediate_size=8192,
        num_attention_heads=24,
        num_key_value_heads=8,
    ),
    "7b": dict(  # Llama-2-7B's shape (bench/gpu: a GPU visit)
        hidden_size=4096,
        num_hidden_layers=32,
        intermediate_size=11008,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
    "smoke": dict(  # seconds: checks the bench itself
        hidden_size=256,
        num_hidden_layers=4,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}
SEEDS = ("base", "a", "b")
CHARS = "0123456789+="


def llama_config(size: str):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=32000,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        **SIZES[size],
    )


def make_tokenizer(folder: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    ).save_pretrained(folder)


def make(out: Path, size: str) -> None:
    """Three seed folders, each written tensor by tensor with evomerge's sharded writer."""
    import torch
    from transformers import AutoModelForCausalLM

    from evomerge.runtime.empty_init import parameters_on_meta
    from evomerge.tensors.sharded_writer import ShardedWriter

    cfg = llama_config(size)
    with parameters_on_meta():
        layout = [
            (n, tuple(p.shape)) for n, p in AutoModelForCausalLM.from_config(cfg).named_parameters()
        ]
    out.mkdir(parents=True, exist_ok=True)
    make_tokenizer(out / "tok")
    cfg.save_pretrained(out / "tok")
    for k, name in enumerate(SEEDS):
        if (out / name).exists():
            continue
        plan = [(n, s, torch.bfloat16) for n, s in layout]
        with ShardedWriter(out / name, plan, max_shard_bytes=2 * 2**30) as writer:
            for i, (n, shape) in enumerate(layout):
                gen = torch.Generator().manual_seed(i)
                if n.endswith("norm.weight"):
                    t = torch.ones(shape)
                else:
                    t = torch.randn(shape, generator=gen).mul_(0.02)
                if k:  # a "fine-tune": the base plus noise of its own
                    noise = torch.Generator().manual_seed(1000 * k + i)
                    t.add_(torch.randn(shape, generator=noise), alpha=0.002)
                writer.write(n, t.bfloat16())
                del t
            writer.copy_files(sorted((out / "tok").iterdir()))
            writer.commit()
        print(f"wrote {out / name}", flush=True)
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(3) for b in range(3)]
    (out / "add.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\n")


def fitness_options(root: Path) -> dict:
    task = {"name": "add", "train": str(root / "add.jsonl"), "metric": "token_accuracy"}
    return {
        "seeds": [str(root / s) for s in SEEDS],
        "tasks": [task],
        "batch_size": 4,
        "dtype": "bfloat16",
    }


RECIPE = {
    "method": "ties",
    "base": 0,
    "genes": {"weight": {"low": 0.0, "high": 1.5}, "density": {"low": 0.1, "high": 1.0}},
    "groups": {"layers_per_group": 4},
}


class AnonPeak:
    """The largest RssAnon of this process, sampled every 5 ms in a thread."""

    def __init__(self):
        self.peak, self._stop = 0, False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self.now())
            time.sleep(0.005)

    def stop(self) -> int:
        self._stop = True
        self._thread.join()
        return max(self.peak, self.now())


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@__import__("torch").no_grad()
def floor(store, tensors, repeats: int) -> tuple[float, float]:
    """Seconds to read every seed tensor once, and to write one model, as plain copies."""
    import torch

    biggest = max(t.numel() for t in tensors)
    buf = torch.empty(biggest, dtype=tensors[0].dtype)
    reads, writes = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(len(tensors)):
            for k in range(store.num_seeds):
                src = store.tensor(k, i)
                buf[: src.numel()].copy_(src)
        reads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for t in tensors:
            t.view(-1).copy_(buf[: t.numel()])
        writes.append(time.perf_counter() - t0)
    return statistics.median(reads), statistics.median(writes)


def child(root: Path, space: str, repeats: int, device: str = "cpu") -> dict:
    import numpy as np
    import torch

    from evomerge.runtime.host import FitnessHost
    from evomerge.spaces.lineage import Lineage, combine
    from evomerge.tensors.seed_store import DeviceSeeds

    torch.set_num_threads(2)
    sampler = AnonPeak()
    spec = {"count": 3, "seed": 0, "options": {}}
    t0 = time.perf_counter()
    if space == "lineage":
        host = FitnessHost(PLUGIN, fitness_options(root), device, space={**spec, "name": "lineage"})
        store = host.lineage_seeds
        n = store.num_params
        a, b, c = (Lineage.of_seed(k, 3, n) for k in range(3))
        genome = combine(
            combine(a, b, n // 3, (0.2, 0.8), (0.1, 0.9)), c, n // 2, (1.0, 0.0), (0.6, 0.4)
        )
    else:
        host = FitnessHost(
            PLUGIN,
            fitness_options(root),
            device,
            space={**spec, "name": "recipe", "recipe": RECIPE},
        )
        store = host.worker.store
        genome = np.array(host.info()["initial"], dtype=np.float32)
    setup = time.perf_counter() - t0
    tensors = host.resident()
    loads, forwards = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            host.worker.realise(genome)  # written into the resident model
        loads.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            scores = host.score_loaded(None)
        forwards.append(time.perf_counter() - t0)
    private = sampler.stop()
    gpu = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
    if isinstance(store, DeviceSeeds):  # seeds kept on the device: time the mapped files
        store = store.host
    read_s, write_s = floor(store, tensors, repeats)
    model = sum(t.numel() * t.element_size() for t in tensors)
    return {
        "space": space,
        "params_b": round(sum(t.numel() for t in tensors) / 1e9, 3),
        "setup_s": round(setup, 2),
        "read_s": round(read_s, 2),
        "load_s": round(statistics.median(loads), 2),
        "floor_s": round(read_s + write_s, 2),
        "forward_s": round(statistics.median(forwards), 2),
        "model_gb": round(model / 1e9, 2),
        "private_gb": round(private / 1e9, 2),
        "peak_rss_gb": round(vm_hwm() / 1e9, 2),
        "gpu_peak_gb": round(gpu / 1e9, 2),
        "device": device,
        "score": round(float(scores.mean()), 4),
    }


def measure(root: Path, repeats: int, device: str = "cpu") -> list[dict]:
    rows = []
    for space in ("lineage", "recipe"):
        cmd = [
            sys.executable,
            __file__,
            "_child",
            str(root),
            space,
            "--repeats",
            str(repeats),
            "--device",
            device,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{space}: the worker failed:\n{done.stderr[-3000:]}")
        out = done.stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["private/model"] = round(row["private_gb"] / row["model_gb"], 2)
        row["load/floor"] = round(row["load_s"] / row["floor_s"], 2)
        row["setup/read"] = round(row["setup_s"] / row["read_s"], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out", type=Path)
    m.add_argument("--size", choices=sorted(SIZES), default="1b")
    s = sub.add_parser("measure")
    s.add_argument("root", type=Path)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--device", default="cpu")
    c = sub.add_parser("_child")
    c.add_argument("root", type=Path)
    c.add_argument("space", choices=["lineage", "recipe"])
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.cmd == "make":
        make(args.out, args.size)
    elif args.cmd == "measure":
        measure(args.root, args.repeats, args.device)
    else:
        print(json.dumps(child(args.root, args.space, args.repeats, args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
