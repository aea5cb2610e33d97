"""A new run that would search on a well-known benchmark's test split is refused in one line
naming the task and the key that allows it; train splits, held-out entries and the user's own
tasks are not."""

import pytest
import yaml

from evomerge.core.errors import ConfigError
from evomerge.interface.cli import main
from evomerge.run.config import load_config, validate


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "a").mkdir(parents=True)

    def write(tasks, **top) -> str:
        cfg = {
            "seed": 0,
            "budget": {"evaluations": 8},
            "fitness": {"plugin": "causal_lm", "options": {"seeds": ["models/a"], "tasks": tasks}},
            "seeds": {"kind": "plugin", "count": 1},
            "strategy": {"name": "cmaes", "popsize": 4},
            **top,
        }
        (tmp_path / "search.yaml").write_text(yaml.safe_dump(cfg))
        return "search.yaml"

    return write


@pytest.mark.parametrize(
    "tasks, field, what",
    [
        ([{"train": "data/gsm8k_test.jsonl"}], "tasks[0].train", "gsm8k's test split"),
        ([{"train": "ok.jsonl"}, {"train": "mmlu/test.jsonl"}], "tasks[1].train", "mmlu's"),
        ([{"train": "data/arc-challenge.test.jsonl"}], "tasks[0].train", "arc's test split"),
        (["my_task", "hellaswag"], "tasks[1]", "lm-eval's hellaswag task"),
        (["mmlu_abstract_algebra"], "tasks[0]", "lm-eval's mmlu task"),
    ],
)
def test_a_benchmark_test_split_is_refused_unless_allowed(config, tasks, field, what):
    path = config(tasks)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"search.yaml: fitness.options.{field}: ") and what in message
    assert "set allow_test_split: true" in message and "\n" not in message
    assert load_config(path, ["allow_test_split=true"]).allow_test_split is True


@pytest.mark.parametrize(
    "tasks",
    [
        [{"train": "data/gsm8k_train.jsonl", "test": "data/gsm8k_test.jsonl"}],  # held out
        [{"train": "research/test.jsonl"}, {"train": "tests/math_train.jsonl"}],
        ["my_reversal", "arcade_test"],  # the user's own lm-eval tasks
    ],
)
def test_train_splits_held_out_files_and_own_tasks_pass(config, tasks):
    assert load_config(config(tasks)).allow_test_split is None


def test_the_cli_refuses_in_one_line_and_writes_nothing(config, tmp_path, capsys):
    path = config([{"name": "gsm8k", "train": "data/gsm8k/test.jsonl"}])
    assert main(["run", path, "--out", str(tmp_path / "run"), "-q"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "evomerge: error: search.yaml: fitness.options.tasks[0].train: 'data/gsm8k/test.jsonl' "
        "looks like gsm8k's test split; a search tuned on a benchmark's test set makes its score "
        "meaningless: search on a train split, or set allow_test_split: true if intended"
    ]
    assert not (tmp_path / "run").exists()
    # a run that started was allowed: resume and export read its config without asking again
    raw = yaml.safe_load((tmp_path / path).read_text())
    assert validate(raw, "config.yaml").fitness.options["tasks"][0]["name"] == "gsm8k"
    with pytest.raises(ConfigError, match="allow_test_split: Input should be a valid boolean"):
        load_config(path, ["allow_test_split=maybe"])
