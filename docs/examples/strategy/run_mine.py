"""The evomerge command with the two strategies of this folder registered."""

import sys

from hill import Hill, HillConfig
from top_k import TopKConfig

from evomerge import register_strategy
from evomerge.interface.cli import main
from evomerge.search.variation import VariationSearch

register_strategy("hill", HillConfig, Hill)
register_strategy("top_k", TopKConfig, VariationSearch)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
