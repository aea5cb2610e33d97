"""A tiny Llama and a character tokenizer made here, and two experts trained here."""

import json
import shutil

import pytest
import torch

CHARS = "0123456789+=abcdefgh"
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def make_tokenizer(folder):
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIAL + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.save_pretrained(folder)
    return fast


def reverse_task(n=8):
    pairs = [(a + b, b + a) for a in "abcd" for b in "efgh"][:n]
    return [{"prompt": p + "=", "answer": q} for p, q in pairs]


def add_task(n=8):
    pairs = [(a, b) for a in range(4) for b in range(4)][:n]
    return [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs]


def train(model, tok, examples, steps, lr):
    """Fit ``examples`` (answer and end token) with Adam, in float64 so the result is the same
    on every CPU's kernels: a stand-in for pre-training or a fine-tune."""
    rows = []
    for e in examples:
        p = tok(e["prompt"])["input_ids"]
        a = tok(e["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((p, a))
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for r, (p, a) in enumerate(rows):
        ids[r, : len(p) + len(a)] = torch.tensor(p + a)
        labels[r, len(p) : len(p) + len(a)] = torch.tensor(a)
    model.double()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    return model.float()


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory):
    """A base and two experts (reversal, addition) from one init, with tasks on disk."""
    return make_lm_dir(tmp_path_factory.mktemp("lm"))


def make_lm_dir(root, hidden=32, heads=4, steps=(40, 60), tie=False):
    """Write the base, the two experts (with the tokenizer) and their tasks under ``root``
    (``hidden`` / ``heads``: vLLM on the CPU wants a head size of 64 or more)."""
    import transformers

    tok = make_tokenizer(root / "tok")
    cfg = transformers.LlamaConfig(
        vocab_size=len(SPECIAL) + len(CHARS),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=32,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg)
    # a base that half knows both tasks, and experts fine-tuned from it (small task vectors, as
    # from a pre-trained model): each expert knows its task and forgets the other's, and
    # merges of the two can know both
    train(base, tok, reverse_task() + add_task(), steps=steps[0], lr=1e-2)
    init = {k: v.clone() for k, v in base.state_dict().items()}
    base.save_pretrained(root / "base")
    for name, task in (("reverse", reverse_task()), ("add", add_task())):
        base.load_state_dict(init)
        train(base, tok, task, steps=steps[1], lr=3e-3).save_pretrained(root / name)
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(e) for e in task))
    for folder in ("base", "reverse", "add"):
        for f in (root / "tok").iterdir():
            shutil.copy(f, root / folder / f.name)
    return root
