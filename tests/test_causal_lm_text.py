"""The causal-LM fitness's tokenising and end handling, on tokenizers made here.

Two real tokenizer families, trained here with ``tokenizers``: byte-level BPE (GPT-2 style,
the space joins the next word) and SentencePiece-style BPE (Metaspace ``▁``, a post-processor
that adds ``<s>`` and ``</s>`` like T5/Llama-1 SentencePiece models). Tiny Llamas learn the
natural tokenisation of prompt + answer, and the fitness must score them on exactly that.
"""

import json

import pytest
import torch
from conftest import ROOT

from evomerge.core.plugins import load_object

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = "cat dog sun map".split()
SPECIAL = ["<pad>", "<s>", "</s>", "<|eot|>"]  # ids 0..3; 2 and 3 both end a sequence


def examples(trailing_space: bool) -> list[dict]:
    pairs = [(a, b) for a in WORDS for b in WORDS if a != b][:8]
    if trailing_space:  # byte-level BPE: the prompt's last space belongs to the answer's word
        return [{"prompt": f"{a} {b} = ", "answer": f"{b} {a}"} for a, b in pairs]
    return [{"prompt": f"{a} {b} =", "answer": f" {b} {a}"} for a, b in pairs]


def make_tokenizer(kind: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts = [e["prompt"] + e["answer"] + " x" for e in examples(kind == "byte_bpe")] * 4
    if kind == "byte_bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        post = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    else:
        tok = Tokenizer(models.BPE(unk_token="<pad>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
        post = processors.TemplateProcessing(
            single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
        )
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = post
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def make_fitness(tmp_path, kind, eos_ids=None, template=None, **task):
    """A random tiny Llama with this tokenizer in a folder, and the fitness over it."""
    folder = tmp_path / kind
    if not folder.exists():
        tok = make_tokenizer(kind)
        if template:
            tok.chat_template = template
        tok.save_pretrained(folder)
        cfg = transformers.LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
        if eos_ids is not None:
            gen = {"eos_token_id": eos_ids, "bos_token_id": 1, "pad_token_id": 0}
            (folder / "generation_config.json").write_text(json.dumps(gen))
        else:
            (folder / "generation_config.json").unlink(missing_ok=True)
        data = examples(kind == "byte_bpe")
        (folder / "task.jsonl").write_text("\n".join(json.dumps(e) for e in data))
    cls = load_object(f"{ROOT}/fitness/causal_lm.py:CausalLM")
    spec = {"name": "t", "train": str(folder / "task.jsonl"), "max_new_tokens": 8, **task}
    fit = cls(seeds=[str(folder)], tasks=[spec])
    fit.setup(torch.device("cpu"))
    # the plug-in builds its model empty (candidates fill it): load the seed, as a worker would
    seed = transformers.AutoModelForCausalLM.from_pretrained(folder)
    fit.model.load_state_dict(seed.state_dict())
    return fit


def memorise(fit, tail: list[int], steps=300):
    """Train the fitness's own model on prefix + answer + ``tail`` (what a fine-tune sees)."""
    rows = [(e.prefix, e.answer + tail) for e in fit.tasks[0].train_tok]
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for r, (p, a) in enumerate(rows):
        ids[r, : len(p) + len(a)] = torch.tensor(p + a)
        labels[r, len(p) : len(p) + len(a)] = torch.tensor(a)
    torch.manual_seed(0)
    for p in fit.model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(fit.model.parameters(), lr=1e-2)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            fit.model(input_ids=ids, labels=labels).loss.backward()
            opt.step()
    fit.model.eval()


def old_split(fit, example: dict):
    """How the fitness cut examples before: prompt (with the tokenizer's EOS, if it adds one)
    + the answer tokenised on its own."""
    from evomerge.kit import Example

    tok = fit.tokenizer
    prompt = tok(example["prompt"])["input_ids"]
    return Example(
        prompt, prompt, tok(example["answer"], add_special_tokens=False)["input_ids"], ""
    )


@pytest.mark.parametrize("kind", ["byte_bpe", "metaspace_bpe"])
def test_the_answer_is_cut_from_prompt_plus_answer(tmp_path, kind):
    fit = make_fitness(tmp_path, kind, metric="token_accuracy")
    tok = fit.tokenizer
    for e, ex in zip(fit.tasks[0].train, fit.tasks[0].train_tok, strict=True):
        joint = tok(e["prompt"] + e["answer"])["input_ids"]
        if kind == "metaspace_bpe":
            assert joint[-1] == tok.eos_token_id  # the tokenizer appends </s> ...
            joint = joint[:-1]  # ... which neither prompt nor answer gets
        assert ex.prefix + ex.answer == joint
        assert tok.decode(ex.answer).strip() == e["answer"].strip()
        assert tok.eos_token_id not in ex.prompt + ex.prefix
        assert old_split(fit, e).prefix + old_split(fit, e).answer != joint  # the old bug
    # a model that learnt the natural text gets full marks; scored on the old cut it did not
    memorise(fit, [tok.eos_token_id])
    assert fit.score_loaded().tolist() == [1.0] * 8
    old = [old_split(fit, e) for e in fit.tasks[0].train]
    assert fit.teacher_forced(old, "token_accuracy", False).mean() < 0.8


def test_generation_starts_from_the_prompt_without_eos(tmp_path):
    fit = make_fitness(tmp_path, "metaspace_bpe", metric="exact_match")
    memorise(fit, [fit.tokenizer.eos_token_id])
    assert fit.score_loaded().tolist() == [1.0] * 8
    ex = fit.tasks[0].train_tok[0]
    assert ex.prompt == ex.prefix and ex.prompt[0] == 1 and ex.prompt[-1] != 2


def test_include_eos_rewards_stopping_and_stop_strings_cut(tmp_path):
    fit = make_fitness(tmp_path, "metaspace_bpe", metric="token_accuracy")
    tok = fit.tokenizer
    rambling = tok(" x", add_special_tokens=False)["input_ids"]
    memorise(fit, rambling)  # right answers, then always " x", never an end
    task = fit.tasks[0]
    assert fit.score_task(task, task.train_tok).tolist() == [1.0] * 8
    with_eos = fit.teacher_forced(task.train_tok, "token_accuracy", True)
    expected = [len(e.answer) / (len(e.answer) + 1) for e in task.train_tok]
    torch.testing.assert_close(with_eos, torch.tensor(expected))
    assert fit.score_task(task, task.train_tok, "exact_match").sum() == 0  # "dog cat x"
    fit = make_fitness(tmp_path, "metaspace_bpe", metric="exact_match", stop=[" x"])
    memorise(fit, rambling)
    assert fit.score_loaded().tolist() == [1.0] * 8  # "dog cat x" cut at " x"


def test_every_end_id_of_the_generation_config_counts(tmp_path):
    fit = make_fitness(tmp_path, "metaspace_bpe", eos_ids=[3, 2], metric="likelihood")
    assert fit.eos_ids == [3, 2]  # generation_config's order, the tokenizer's </s> once
    task = fit.tasks[0]
    batch = task.train_tok[:3]
    # likelihood with the end: exp(mean(log p(answer tokens), log(p(id 3) + p(id 2))))
    got = fit.teacher_forced(batch, "likelihood", True)
    for r, e in enumerate(batch):
        seq = torch.tensor([e.prefix + e.answer])
        logp = torch.log_softmax(fit.model(input_ids=seq).logits[0].float(), dim=-1)
        pos = range(len(e.prefix) - 1, len(e.prefix) + len(e.answer) - 1)
        terms = [logp[p, t].item() for p, t in zip(pos, e.answer, strict=True)]
        last = logp[len(e.prefix) + len(e.answer) - 1]
        terms.append(torch.log(last[3].exp() + last[2].exp()).item())
        assert got[r].item() == pytest.approx(torch.tensor(terms).mean().exp().item(), rel=1e-4)
    # a model that ends its answers with <|eot|> (id 3) stops: both metrics see it
    memorise(fit, [3])
    acc = fit.teacher_forced(task.train_tok, "token_accuracy", True)
    ends = []
    for r, e in enumerate(task.train_tok):
        logits = fit.model(input_ids=torch.tensor([e.prefix + e.answer])).logits[0]
        best = logits[len(e.prefix) - 1 :].argmax(dim=-1).tolist()
        hits = sum(b == t for b, t in zip(best, e.answer, strict=False)) + (best[-1] in (2, 3))
        assert acc[r].item() == pytest.approx(hits / (len(e.answer) + 1))
        ends.append(best[-1])
    assert ends.count(3) >= 6  # it learnt to end with id 3, which counts as an end
    # greedy decoding follows the teacher-forced argmax: a full score stops at id 3 and matches
    exact = fit.score_task(task, task.train_tok, "exact_match")
    full = [r for r in range(8) if acc[r] == 1.0]
    assert full and all(exact[r] == 1.0 for r in full)
    from evomerge.kit import answer_text

    cat = fit.tokenizer(" cat", add_special_tokens=False)["input_ids"]
    assert answer_text(fit.tokenizer, [3, 2], cat + [3] + cat + [2], ()) == "cat"
    assert answer_text(fit.tokenizer, [3, 2], cat + cat, ("t c",)) == "ca"


TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_chat_template_wraps_prompts_as_a_user_turn(tmp_path):
    fit = make_fitness(tmp_path, "byte_bpe", template=TEMPLATE, chat_template=True)
    tok = fit.tokenizer
    ex, e = fit.tasks[0].train_tok[0], fit.tasks[0].train[0]
    text = f"<s><|user|>{e['prompt']}<|end|><|assistant|>"
    assert ex.prompt == tok(text, add_special_tokens=False)["input_ids"]
    assert ex.prefix + ex.answer == tok(text + e["answer"], add_special_tokens=False)["input_ids"]
    assert ex.prompt.count(1) == 1  # the template's BOS only, not the tokenizer's as well
    memorise(fit, [tok.eos_token_id])
    fit.tasks[0].metric = "exact_match"
    assert fit.score_loaded().tolist() == [1.0] * 8


def test_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"chat_template: the tokenizer of .* has no chat"):
        make_fitness(tmp_path, "byte_bpe", chat_template=True)
    cls = load_object(f"{ROOT}/fitness/causal_lm.py:CausalLM")
    task = {"train": str(tmp_path / "byte_bpe" / "task.jsonl")}
    with pytest.raises(ValueError, match=r"tasks\[0\]\.stop: give a string or a list"):
        cls(seeds=[str(tmp_path)], tasks=[{**task, "stop": [""]}])
    with pytest.raises(ValueError, match=r"tasks\[0\]\.include_eos: 'yes' is not true or false"):
        cls(seeds=[str(tmp_path)], tasks=[task], include_eos="yes")
