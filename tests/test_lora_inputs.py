"""LoRA adapters and Hub ids wherever a model folder is accepted: `BASE+ADAPTER` merges equal
PEFT's merge_and_unload; `org/name[@rev]` resolves from a cache laid out here (no download)."""

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_lora import hub_cache, make_adapter, make_base, peft_merged

from evomerge.core.errors import EvomergeError
from evomerge.interface.cli import main
from evomerge.run.config import validate
from evomerge.tensors.model_ref import open_model, pin_model, resolve_model

pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Llama and three PEFT adapters over it: plain, rslora with a per-module alpha
    and a saved lm_head, and one on the embeddings."""
    root = tmp_path_factory.mktemp("lora")
    base = make_base(root / "base")
    make_adapter(base, root / "plain", seed=1)
    make_adapter(
        base,
        root / "rs",
        seed=2,
        r=6,
        use_rslora=True,
        alpha_pattern={"v_proj": 3},
        target_modules=["q_proj", "v_proj", "down_proj"],
        modules_to_save=["lm_head"],
    )
    make_adapter(base, root / "embed", seed=3, target_modules=["embed_tokens", "o_proj"])
    return root


def merge(tmp_path, cfg) -> tuple[int, dict]:
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    rc = main(["merge", str(path), "--out", str(out), "-q"])
    return rc, (load_file(str(out / "model.safetensors")) if rc == 0 else {})


@pytest.mark.parametrize("adapter", ["plain", "rs", "embed"])
def test_base_plus_adapter_merges_as_peft_does(models, tmp_path, adapter):
    """A mergekit YAML naming `base+adapter` gives PEFT's merge_and_unload, tensor for tensor."""
    cfg = {
        "merge_method": "linear",
        "models": [{"model": f"{models}/base+{models}/{adapter}", "parameters": {"weight": 1.0}}],
        "dtype": "float32",
    }
    rc, mine = merge(tmp_path, cfg)
    assert rc == 0
    theirs = peft_merged(models / "base", models / adapter)
    assert mine.keys() == theirs.keys()
    base = load_file(str(models / "base" / "model.safetensors"))
    changed = [k for k in mine if not torch.equal(mine[k], base[k])]
    assert len(changed) >= 3  # the adapter really changed the model
    for k in mine:
        torch.testing.assert_close(mine[k], theirs[k], rtol=0, atol=1e-6)
    # the config and the lazy reader agree; the adapter's tensors alone are replaced
    with open_model(f"{models}/base+{models}/{adapter}") as m:
        assert {k for k in m.names() if m.replaced(k)} >= set(changed)
        torch.testing.assert_close(m.get(changed[0]), theirs[changed[0]], rtol=0, atol=1e-6)


def test_task_arithmetic_of_two_adapters_adds_their_updates(models, tmp_path):
    """Two adapters of one base as task vectors: base + sum of PEFT's updates."""
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": str(models / "base"),
        "models": [
            {"model": f"{models}/base+{models}/{a}", "parameters": {"weight": 1.0}}
            for a in ("plain", "embed")
        ],
        "dtype": "float32",
    }
    rc, mine = merge(tmp_path, cfg)
    assert rc == 0
    base = load_file(str(models / "base" / "model.safetensors"))
    a, b = (peft_merged(models / "base", models / x) for x in ("plain", "embed"))
    for k in mine:
        torch.testing.assert_close(mine[k], base[k] + (a[k] - base[k]) + (b[k] - base[k]))


def test_an_adapter_of_another_base_is_refused(models, tmp_path, capsys):
    other = tmp_path / "other"
    make_base(other)
    make_adapter(models / "base", tmp_path / "wide", target_modules=["up_proj"])
    # a base whose up_proj is narrower than the adapter's update
    import transformers as tf
    from tiny_lora import LLAMA

    tf.LlamaForCausalLM(tf.LlamaConfig(**{**LLAMA, "intermediate_size": 48})).save_pretrained(other)
    cfg = {"merge_method": "linear", "models": [{"model": f"{other}+{tmp_path}/wide"}]}
    rc, _ = merge(tmp_path, cfg)
    err = capsys.readouterr().err
    assert rc == 2 and "up_proj.weight" in err and "the adapter was trained on" in err
    assert not (tmp_path / "out").exists()
    cfg = {"merge_method": "linear", "models": [{"model": f"{models}/base+{models}/base"}]}
    rc, _ = merge(tmp_path, cfg)
    assert rc == 2 and "not a PEFT adapter folder" in capsys.readouterr().err


def test_causal_lm_seeds_take_adapters(models):
    """The causal-LM plug-in's seeds accept `base+adapter`: its seeds are PEFT's merges."""
    from tiny_lm import make_tokenizer

    from evomerge.core.plugins import load_object

    make_tokenizer(models / "base")
    cls = load_object("evomerge.fitness.causal_lm:CausalLM")
    task = models / "t.jsonl"
    task.write_text('{"prompt": "ab=", "answer": "ba"}\n')
    seeds = [str(models / "base"), f"{models}/base+{models}/rs"]
    fit = cls(seeds=seeds, tasks=[{"train": str(task), "metric": "token_accuracy"}])
    fit.setup(torch.device("cpu"))
    rows = fit.make_seeds(2, 0)
    theirs = peft_merged(models / "base", models / "rs")
    flat = torch.cat([theirs[n].reshape(-1) for n, _ in fit.param_layout()])
    torch.testing.assert_close(rows[1], flat, rtol=0, atol=1e-6)
    assert fit.export_info()["seeds"] == seeds


def test_hub_ids_resolve_from_the_cache(models, tmp_path, monkeypatch, capsys):
    """`org/name`, `org/name@main` and `org/name@<commit>` (and `+` of them) read a snapshot
    laid out on disk; a missing one names the repo, the revision and the download command."""
    cache = tmp_path / "hub"
    snap = hub_cache(cache, "tiny-org/base", models / "base", COMMIT)
    hub_cache(cache, "tiny-org/lora", models / "rs", "f" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    for text in ("tiny-org/base", "tiny-org/base@main", f"tiny-org/base@{COMMIT}"):
        assert resolve_model(text).base == snap
    assert (
        pin_model("tiny-org/base+tiny-org/lora")
        == f"tiny-org/base@{COMMIT}+tiny-org/lora@{'f' * 40}"
    )
    cfg = {
        "merge_method": "linear",
        "models": [{"model": "tiny-org/base+tiny-org/lora@main", "parameters": {"weight": 1.0}}],
        "dtype": "float32",
    }
    rc, mine = merge(tmp_path, cfg)
    assert rc == 0
    theirs = peft_merged(models / "base", models / "rs")
    for k in mine:
        torch.testing.assert_close(mine[k], theirs[k], rtol=0, atol=1e-6)
    assert (tmp_path / "out" / "config.json").is_file()
    with pytest.raises(EvomergeError) as err:
        resolve_model("tiny-org/base@v2")
    text = str(err.value)
    assert "tiny-org/base" in text and "revision v2" in text
    assert "huggingface-cli download tiny-org/base --revision v2" in text
    cfg["models"][0]["model"] = "tiny-org/missing"
    capsys.readouterr()
    rc, _ = merge(tmp_path, cfg)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "huggingface-cli download tiny-org/missing" in err


def test_a_run_records_the_commit_its_hub_seeds_resolved_to(models, tmp_path, monkeypatch):
    """The run's config pins `org/name` to `org/name@<commit>`; a pinned id stays pinned (what
    a resume and every Ray worker read), and a missing one is refused naming the field."""
    from conftest import base_config

    from evomerge.core.errors import ConfigError

    cache = tmp_path / "hub"
    hub_cache(cache, "tiny-org/base", models / "base", COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    raw = base_config()
    raw["fitness"] = {
        "plugin": "evomerge.fitness.causal_lm:CausalLM",
        "options": {"seeds": ["tiny-org/base", f"{models}/base+{models}/plain"], "tasks": []},
    }
    cfg = validate(raw, "run.yaml")
    seeds = cfg.fitness.options["seeds"]
    assert seeds == [f"tiny-org/base@{COMMIT}", f"{models}/base+{models}/plain"]
    again = validate(cfg.to_dict(), "config.yaml")  # what resume reads back
    assert again.fitness.options["seeds"] == seeds
    raw["fitness"]["options"]["seeds"] = ["tiny-org/gone@main"]
    with pytest.raises(ConfigError, match=r"run.yaml: fitness.options.seeds\[0\]: .*gone"):
        validate(raw, "run.yaml")
