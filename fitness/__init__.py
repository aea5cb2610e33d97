"""The ready fitness plug-ins, installed as ``evomerge.fitness`` (name them in a config as
``plugin: digits``, ``evomerge.fitness.digits:Digits`` or ``fitness/digits.py:Digits``)."""
