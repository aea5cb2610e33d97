"""One loader makes every plug-in: the same one-line refusals, with the field of the config
that named it (``fitness.plugin`` for a search, ``statistics.plugin`` for a data-aware merge)."""

from __future__ import annotations

import re

import pytest
import torch

from evomerge.core.errors import PluginError
from evomerge.core.plugin_loader import load_fitness

PLUGIN = """
import sys
from evomerge import Fitness


class Fine(Fitness):
    def __init__(self, width: int = 3):
        self.width = width

    def setup(self, device):
        self.num_params, self.num_examples = self.width, 2

    def score(self, params, example_ids=None):
        return params[:, :2].abs()


class Exits(Fine):
    def __init__(self):
        sys.exit(3)


class Picky(Fine):
    def __init__(self, width: int = 3):
        if width < 1:
            raise ValueError("width must be >= 1")
        super().__init__(width)


class Plain:
    pass
"""


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(PLUGIN)
    return path


@pytest.mark.parametrize("field", ["fitness.plugin", "statistics.plugin"])
def test_a_good_plug_in_is_made_with_its_options(plugin_file, field):
    fit = load_fitness(f"{plugin_file}:Fine", {"width": 5}, field=field)
    fit.setup(torch.device("cpu"))
    assert fit.num_params == 5
    assert fit.score(torch.tensor([[1.0, -2.0, 0, 0, 0]])).tolist() == [[1.0, 2.0]]


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("Plain", {}, r"^{f}\.plugin: mine\.py:Plain is not a subclass of evomerge\.Fitness$"),
        (
            "Fine",
            {"widht": 5},
            r"^{f}\.options: mine\.py:Fine rejected the options \(.*'widht'.*\); "
            r"it accepts \(self, width: 'int' = 3\)$",
        ),
        ("Exits", {}, r"^{f}\.options: mine\.py:Exits: SystemExit: sys\.exit\(3\)$"),
        ("Picky", {"width": 0}, r"^{f}\.options: mine\.py:Picky: ValueError: width must be >= 1$"),
    ],
)
@pytest.mark.parametrize("section", ["fitness", "statistics"])
def test_bad_plug_ins_are_one_line_with_exit_code_2(plugin_file, name, options, message, section):
    with pytest.raises(PluginError) as exc:
        load_fitness(f"{plugin_file}:{name}", options, field=f"{section}.plugin")
    assert exc.value.exit_code == 2
    assert len(str(exc.value).splitlines()) == 1
    assert re.match(message.replace("{f}", section), str(exc.value)), exc.value


def test_source_stands_in_for_a_file_on_another_node(tmp_path):
    missing = tmp_path / "elsewhere.py"
    fit = load_fitness(f"{missing}:Fine", {}, source=PLUGIN)
    assert type(fit).__name__ == "Fine" and fit.width == 3
