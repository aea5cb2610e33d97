"""Which packages the wheel holds; everything else about the project is in pyproject.toml.

The ready fitness plug-ins and runnable configs keep their top-level folders (``fitness/``,
``configs/``: what users read in a clone) and install as ``evomerge.fitness`` and
``evomerge.configs``. Every file in them ships, so a new plug-in or config needs no edit here.
"""

from setuptools import find_packages, setup

BUNDLED = {"evomerge.fitness": "fitness", "evomerge.configs": "configs"}

packages = find_packages(include=["evomerge", "evomerge.*"])
for package, folder in BUNDLED.items():
    packages += [package] + [f"{package}.{sub}" for sub in find_packages(folder)]

setup(
    packages=sorted(set(packages)),
    package_dir=BUNDLED,
    package_data={
        "evomerge": ["templates/**/*"],
        "evomerge.fitness": ["**/*.json", "**/*.jsonl", "**/*.yaml", "**/*.txt"],
        "evomerge.configs": ["**/*"],
    },
    exclude_package_data={"": ["**/__pycache__/*", "**/*.pyc"]},
)
