"""The built-in merge methods, each declared once: kernel, parameters, base role, mergekit name.

The kernels live in their own modules (:mod:`~evomerge.ops.interpolation`,
:mod:`~evomerge.ops.task_vectors`, ...); this table only says how each is called, so the one
place that knows a method's contract is its declaration here. Defaults are mergekit's.
"""

from __future__ import annotations

from functools import partial

from evomerge.ops import adamerging, frank_wolfe
from evomerge.ops.arcee_fusion import arcee_fusion
from evomerge.ops.consensus import consensus_ta, consensus_ties, tall_masks
from evomerge.ops.data_aware import fisher, regmean, regmean_statistics_problem
from evomerge.ops.della import della_magprune, density_epsilon_problem
from evomerge.ops.interpolation import linear, region_crossover, slerp
from evomerge.ops.learned_coefficients import learned_combination
from evomerge.ops.least_squares import pleas
from evomerge.ops.method import (
    FLAG,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    BaseRole,
    MergeMethod,
    Parameters,
    Range,
)
from evomerge.ops.pcb import pcb
from evomerge.ops.pointwise import nearswap, passthrough
from evomerge.ops.ram import ram, ramplus_tl
from evomerge.ops.sce import sce
from evomerge.ops.spherical import karcher, model_stock, multislerp, nuslerp
from evomerge.ops.task_vectors import (
    breadcrumbs_trim,
    dare_drop,
    generalized_task_arithmetic,
    magnitude_trim,
)

MERGEKIT = "mergekit (Goddard et al. 2024, arXiv:2403.13257)"
TASK_ARITHMETIC = "Ilharco et al. 2023, Editing Models with Task Arithmetic, arXiv:2212.04089"
TIES = "Yadav et al. 2023, TIES-Merging, arXiv:2306.01708"
DARE = "Yu et al. 2024, Language Models are Super Mario (DARE), arXiv:2311.03099"
BREADCRUMBS = "Davari & Belilovsky 2024, Model Breadcrumbs, arXiv:2312.06795"
DELLA = "Deep et al. 2024, DELLA-Merging, arXiv:2406.11617"
RAM = "Reinforced Agent Merging (RAM), arXiv:2601.13572, as in mergekit 0.1.5"
TALL = (
    "Wang et al. 2024, Localizing Task Information for Improved Model Merging and Compression "
    "(TALL masks, consensus merging), arXiv:2405.07813"
)
TALL_DEFAULTS = {"tall_mask_lambda": 0.4, "lambda": 1.0}
TALL_RANGES = {"tall_mask_lambda": NON_NEGATIVE, "k": Range(1.0)}


#: della's density and epsilon, checked together (density +/- epsilon inside (0, 1))
DELLA_JOINT = density_epsilon_problem

#: the task-vector family's parameters (weight and lambda: any finite number)
TASK_VECTOR_RANGES = {
    "density": FRACTION,
    "gamma": FRACTION,
    "epsilon": Range(0.0, 0.5, high_open=True),  # density +/- epsilon must stay inside (0, 1)
    "normalize": FLAG,
    "rescale": FLAG,
    "int8_mask": FLAG,
}


def _task_vectors(name, sparsify, consensus, normalize, rescale, reference, extra=None, joint=None):
    """A generalized task arithmetic method (mergekit's family of task-vector merges)."""
    names = {"density", "normalize", "rescale", "lambda", "int8_mask", *(extra or {})}
    return MergeMethod(
        name,
        partial(generalized_task_arithmetic, sparsify=sparsify, consensus=consensus),
        BaseRole.REQUIRED,
        Parameters(("weight",), {"density": 1.0, **(extra or {})}),
        Parameters(
            defaults={"normalize": normalize, "rescale": rescale, "lambda": 1.0, "int8_mask": False}
        ),
        random=sparsify in (dare_drop, della_magprune),
        mergekit=name,
        reference=reference,
        ranges={k: r for k, r in TASK_VECTOR_RANGES.items() if k in names},
        joint=joint,
    )


crumbs = {"gamma": 0.01}
BUILT_IN: tuple[MergeMethod, ...] = (
    MergeMethod(
        "linear",
        linear,
        BaseRole.NONE,
        Parameters(("weight",)),
        Parameters(defaults={"normalize": True}),
        mergekit="linear",
        reference="Wortsman et al. 2022, Model soups, arXiv:2203.05482",
        ranges={"normalize": FLAG},
    ),
    _task_vectors("task_arithmetic", None, False, False, False, TASK_ARITHMETIC),
    _task_vectors("ties", magnitude_trim, True, True, False, TIES),
    _task_vectors("dare_linear", dare_drop, False, False, True, DARE),
    _task_vectors("dare_ties", dare_drop, True, False, True, DARE),
    _task_vectors("breadcrumbs", breadcrumbs_trim, False, False, False, BREADCRUMBS, crumbs),
    _task_vectors("breadcrumbs_ties", breadcrumbs_trim, True, False, False, BREADCRUMBS, crumbs),
    MergeMethod(
        "slerp",
        slerp,
        BaseRole.ENDPOINT,
        Parameters(),
        Parameters(("t",)),
        mergekit="slerp",
        reference="Shoemake 1985, Animating rotation with quaternion curves (SIGGRAPH)",
        ranges={"t": FRACTION},
    ),
    MergeMethod(
        "region_crossover",
        region_crossover,
        BaseRole.NONE,
        Parameters(),
        Parameters(("split", "w", "omega"), {"offset": 0}),
        reference="Abrantes et al. 2025, Competition and Attraction Improve Model Fusion "
        "(M2N2), arXiv:2508.16204",
        ranges={
            "split": Range(0, integer=True),
            "offset": Range(0, integer=True),
            "omega": Range(none=True),
        },
    ),
    _task_vectors("della", della_magprune, True, True, True, DELLA, {"epsilon": 0.15}, DELLA_JOINT),
    _task_vectors(
        "della_linear", della_magprune, False, False, True, DELLA, {"epsilon": 0.15}, DELLA_JOINT
    ),
    MergeMethod(
        "model_stock",
        model_stock,
        BaseRole.REQUIRED,
        Parameters(),
        Parameters(defaults={"filter_wise": False}),
        mergekit="model_stock",
        reference="Jang et al. 2024, Model Stock, arXiv:2403.19522",
        ranges={"filter_wise": FLAG},
    ),
    MergeMethod(
        "nuslerp",
        nuslerp,
        BaseRole.OPTIONAL,
        Parameters(("weight",)),
        Parameters(defaults={"nuslerp_flatten": True, "nuslerp_row_wise": False}),
        mergekit="nuslerp",
        reference=MERGEKIT,
        ranges={"nuslerp_flatten": FLAG, "nuslerp_row_wise": FLAG},
    ),
    MergeMethod(
        "multislerp",
        multislerp,
        BaseRole.OPTIONAL,
        Parameters(("weight",)),
        Parameters(defaults={"normalize_weights": True, "eps": 1e-8}),
        mergekit="multislerp",
        reference=MERGEKIT,
        ranges={"normalize_weights": FLAG, "eps": POSITIVE},
    ),
    MergeMethod(
        "karcher",
        karcher,
        BaseRole.NONE,
        Parameters(),
        Parameters(defaults={"max_iter": 10, "tol": 1e-5}),
        mergekit="karcher",
        reference="Karcher 1977, Riemannian center of mass and mollifier smoothing",
        ranges={"max_iter": Range(1, integer=True), "tol": POSITIVE},
    ),
    MergeMethod(
        "sce",
        sce,
        BaseRole.REQUIRED,
        Parameters(),
        Parameters(defaults={"select_topk": 1.0, "int8_mask": False}),
        mergekit="sce",
        reference="Wan et al. 2024, FuseChat (SCE merging), arXiv:2408.07990",
        ranges={"select_topk": FRACTION, "int8_mask": FLAG},
    ),
    MergeMethod(
        "nearswap",
        nearswap,
        BaseRole.REQUIRED,
        Parameters(),
        Parameters(("t",)),
        mergekit="nearswap",
        reference=MERGEKIT,
        ranges={"t": NON_NEGATIVE},
    ),
    MergeMethod(
        "passthrough",
        passthrough,
        BaseRole.NONE,
        Parameters(defaults={"scale": 1.0}),
        Parameters(),
        mergekit="passthrough",
        reference=MERGEKIT,
    ),
    MergeMethod(
        "fisher",
        fisher,
        BaseRole.NONE,
        Parameters(defaults={"weight": 1.0}),
        Parameters(defaults={"fisher_floor": 1e-6}),
        statistics="fisher",
        reference="Matena & Raffel 2022, Merging Models with Fisher-Weighted Averaging, "
        "arXiv:2111.09832",
        ranges={"weight": NON_NEGATIVE, "fisher_floor": POSITIVE},
    ),
    MergeMethod(
        "regmean",
        regmean,
        BaseRole.NONE,
        Parameters(defaults={"weight": 1.0}),
        Parameters(defaults={"alpha": 0.9}),
        statistics="gram",
        reference="Jin et al. 2023, Dataless Knowledge Fusion by Merging Weights of Language "
        "Models (RegMean), arXiv:2212.09849",
        ranges={"weight": NON_NEGATIVE, "alpha": FRACTION},
        statistics_check=regmean_statistics_problem,
    ),
    MergeMethod(
        "regmean_plusplus",
        regmean,
        BaseRole.NONE,
        Parameters(defaults={"weight": 1.0}),
        Parameters(defaults={"alpha": 0.9}),
        statistics="merged_gram",
        reference="Nguyen et al. 2025, RegMean++: Enhancing Effectiveness and Generalization of "
        "Regression Mean for Model Merging, arXiv:2508.03121",
    ),
    MergeMethod(
        "pleas",
        pleas,
        BaseRole.NONE,
        Parameters(defaults={"weight": 1.0}),
        Parameters(defaults={"ridge": 1e-4}),
        statistics="merged_cross_gram",
        reference="Nasery et al. 2024, PLeaS: Merging Models with Permutations and Least "
        "Squares (the least-squares step), arXiv:2407.02447",
    ),
    MergeMethod(
        "arcee_fusion",
        arcee_fusion,
        BaseRole.ENDPOINT,
        Parameters(),
        Parameters(),
        mergekit="arcee_fusion",
        reference=MERGEKIT,
    ),
    MergeMethod(
        "ram",
        ram,
        BaseRole.REQUIRED,
        Parameters(),
        Parameters(defaults={"epsilon": 1e-5}),
        mergekit="ram",
        ranges={"epsilon": POSITIVE},
        reference=RAM,
    ),
    MergeMethod(
        "ramplus_tl",
        ramplus_tl,
        BaseRole.REQUIRED,
        Parameters(),
        Parameters(defaults={"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}),
        mergekit="ramplus_tl",
        ranges={"r": FRACTION, "alpha": NON_NEGATIVE, "epsilon": POSITIVE},
        reference=RAM,
    ),
    MergeMethod(
        "pcb",
        pcb,
        BaseRole.REQUIRED,
        Parameters(defaults={"weight": 1.0}),
        Parameters(defaults={"pcb_ratio": 0.1, "lambda": 1.0}),
        ranges={"pcb_ratio": FRACTION},
        reference="Du et al. 2024, Parameter Competition Balancing for Model Merging "
        "(PCB-merging), arXiv:2410.02396",
    ),
    MergeMethod(
        "consensus_ta",
        consensus_ta,
        BaseRole.REQUIRED,
        Parameters(defaults={"weight": 1.0}),
        Parameters(defaults={"k": 2, **TALL_DEFAULTS}),
        ranges=TALL_RANGES,
        reference=TALL,
    ),
    MergeMethod(
        "consensus_ties",
        consensus_ties,
        BaseRole.REQUIRED,
        Parameters(defaults={"weight": 1.0, "density": 0.2}),
        Parameters(defaults={"k": 2, **TALL_DEFAULTS}),
        ranges={**TALL_RANGES, "density": FRACTION},
        reference=TALL,
    ),
    MergeMethod(
        "tall_masks",
        tall_masks,
        BaseRole.REQUIRED,
        Parameters(defaults={"weight": 1.0}),
        Parameters(("task",), TALL_DEFAULTS),
        ranges={"tall_mask_lambda": NON_NEGATIVE},
        reference=TALL,
    ),
    MergeMethod(
        "adamerging",
        learned_combination,
        BaseRole.REQUIRED,
        Parameters(),
        Parameters(
            defaults={
                "layer_wise": True,
                "steps": 500,
                "lr": 1e-3,
                "init": 0.3,
                "batch": 32,
            }
        ),
        statistics="coefficients",
        learner=adamerging.learn,
        ranges={
            "layer_wise": FLAG,
            "steps": Range(0, integer=True),
            "lr": POSITIVE,
            "init": FRACTION,
            "batch": Range(1, integer=True),
        },
        reference="Yang et al. 2024, AdaMerging: Adaptive Model Merging for Multi-Task "
        "Learning, arXiv:2310.02575 (as in the authors' released code)",
    ),
    MergeMethod(
        "frank_wolfe",
        learned_combination,
        BaseRole.REQUIRED,
        Parameters(),
        Parameters(defaults={"layer_wise": True, "steps": 10, "step_size": 1.0, "lambda": 1.0}),
        statistics="coefficients",
        learner=frank_wolfe.learn,
        ranges={
            "layer_wise": FLAG,
            "steps": Range(0, integer=True),
            "step_size": Range(0.0, 1.0, low_open=True),
            "lambda": POSITIVE,
        },
        reference="Chen et al. 2025, FW-Merging: Scaling Model Merging with Frank-Wolfe "
        "Optimization, arXiv:2503.12649 (as in the authors' released code)",
    ),
)
del crumbs
