"""A recipe member as a mergekit config: the same merge for ``mergekit-yaml`` or ``evomerge merge``.

One ``filter`` entry per tensor where a parameter differs between groups (longest name first,
so the most specific filter wins in mergekit's first-match order), a plain value where it is
the same everywhere. Only methods that declare a mergekit name (``MergeMethod.mergekit``).
"""

from __future__ import annotations

from evomerge.ops.method import BaseRole


def mergekit_doc(space, decoded: dict, seeds: list[str], dtype: str) -> dict | None:
    """The recipe as a mergekit config: one ``filter`` entry per tensor, longest name first."""
    section = space.section
    if space.method.mergekit is None or len(seeds) != len(space.models) + (
        section.base is not None
    ):
        return None
    order = sorted(
        range(len(space.layout)), key=lambda i: (-len(space.layout[i][0]), space.layout[i][0])
    )

    def conditional(values: list[float]) -> float | list[dict]:
        by_tensor = [values[i] for i in order]
        if len(set(by_tensor)) == 1:
            return by_tensor[0]
        pairs = zip(order, by_tensor, strict=True)
        return [{"filter": space.layout[i][0], "value": v} for i, v in pairs]

    def per_tensor(get) -> list:
        return [get(decoded[space.group_of[i]]) for i in range(len(space.layout))]

    models = []
    if space.method.base is BaseRole.ENDPOINT and section.base is not None:
        models.append({"model": seeds[section.base]})
    for j, seed_index in enumerate(space.models):
        names = decoded[space.groups[0]]["models"][j].keys()
        params = {p: conditional(per_tensor(lambda g, p=p, j=j: g["models"][j][p])) for p in names}
        models.append({"model": seeds[seed_index], **({"parameters": params} if params else {})})
    doc = {"merge_method": space.method.mergekit, "models": models, "dtype": dtype}
    if section.base is not None:
        doc["base_model"] = seeds[section.base]
    names = decoded[space.groups[0]]["params"].keys()
    params = {p: conditional(per_tensor(lambda g, p=p: g["params"][p])) for p in names}
    if params:
        doc["parameters"] = params
    if space.method.random:
        doc["random_seed"] = section.seed
    return doc
