"""One fitness plug-in instance, set up once, behind checks that turn its failures into one line.

The same host runs in-process (local evaluator) and inside each Ray actor (ray evaluator), so
both paths score candidates with identical code.
"""

from __future__ import annotations

import numpy as np
import torch

from evomerge.core.contracts import resident_tensors
from evomerge.core.errors import ConfigError, EvomergeError, PluginError
from evomerge.core.plugin_loader import load_fitness
from evomerge.spaces.resident_recipe import on_device
from evomerge.tensors.seed_store import DenseSeeds, MappedSeeds, from_description, load_into


def check_device(device: str) -> torch.device:
    """The evaluator's torch device, refused in one line (a config error, not the plug-in's)
    when it does not parse or this machine does not have it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"evaluator.device: '{device}' is not a torch device ({exc})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index or 0) >= count:
            raise ConfigError(
                f"evaluator.device: '{device}' but this machine has {count} CUDA device(s); "
                "use device: cpu, or run where the GPU is"
            )
    elif dev.type not in ("cpu", "meta"):
        backend = getattr(torch.backends, dev.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ConfigError(
                f"evaluator.device: '{device}' is not available on this machine; use cpu"
            )
    return dev


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0]


def aligned_rows(params: np.ndarray) -> torch.Tensor:
    """Copy ``(B, N)`` rows so each starts on a 64-byte boundary.

    BLAS kernels may round differently for differently aligned inputs; with every row aligned
    alike a candidate gets the same scores alone, in any batch position, locally or on Ray.
    """
    b, n = params.shape
    stride = -(-n // 16) * 16
    buf = torch.empty(b, stride, dtype=torch.float32)
    buf.numpy()[:, :n] = params
    return buf[:, :n]


class FitnessHost:
    """Loads the plug-in named by ``spec``, calls ``setup(device)``, and checks every result.

    ``plugin`` is the user's plug-in; ``fitness`` what scores flat rows (the plug-in, or for
    recipes over a plug-in without a resident model a :class:`RecipeFitness` around it).
    ``resident`` is the plug-in's resident model tensors (a
    :class:`~evomerge.core.contracts.ResidentModel`) when lineage or recipe candidates are loaded
    into it; ``recipe`` then loads recipe genes (``space`` is the recipe space either way).
    """

    def __init__(
        self,
        spec,
        options,
        device="cpu",
        source=None,
        threads=None,
        recipe=None,
        lineage=None,
        seeds_on_device="auto",
    ):
        if threads:
            torch.set_num_threads(int(threads))
        self.spec = spec
        self.name = spec.rsplit("/", 1)[-1]
        self.fitness = load_fitness(spec, options, source=source)
        self.plugin = self.fitness
        self.device = check_device(device)
        self.seeds_on_device = seeds_on_device
        self._call("setup", self.device)
        f = self.fitness
        if f.num_params <= 0 or f.num_examples <= 0:
            raise PluginError(
                f"fitness {self.name}: setup() must set num_params and num_examples > 0 "
                f"(got {f.num_params}, {f.num_examples})"
            )
        self.recipe = self.space = self.resident = None
        if recipe is not None:
            self._use_recipe(recipe)
        # The seeds lineage genomes mix: made or mapped here from a spec, or described by the
        # driver (on Ray, a read-only object-store array shared by the node's workers, or the
        # seed folders, memory-mapped and so shared through the page cache).
        self.lineage_seeds = self.load_seeds = None
        if isinstance(lineage, dict) and "count" in lineage:
            self.lineage_seeds = self.lineage_store(lineage)
        elif lineage is not None:
            self.lineage_seeds = from_description(lineage)
        if self.lineage_seeds is not None:
            self.resident = self._resident()
            if self.resident is not None:
                layout = self._call("param_layout")
                self.load_seeds = on_device(
                    self.lineage_seeds, layout, self.device, seeds_on_device
                )

    def _resident(self) -> list[torch.Tensor] | None:
        try:
            return resident_tensors(self.plugin)
        except EvomergeError:
            raise
        except Exception as exc:
            raise PluginError(
                f"fitness {self.name}: resident_tensors() raised {_describe(exc)}"
            ) from exc

    def lineage_store(self, spec: dict):
        """The lineage seeds: the plug-in's seed folders, mapped, or the seeds it makes."""
        folders = self._call("seed_folders")
        if folders is None:
            return DenseSeeds(self.make_seeds(spec["count"], spec["seed"], spec["options"]))
        if len(folders) != spec["count"]:
            raise PluginError(
                f"seeds.count is {spec['count']} but fitness {self.name} names "
                f"{len(folders)} seed folders; make them agree",
                exit_code=2,
            )
        return MappedSeeds(folders, self._call("param_layout"))

    def _use_recipe(self, recipe: dict) -> None:
        """Search merge recipes over the plug-in's seeds instead of its raw parameters.

        With a resident model, candidates are merged tensor by tensor straight into it from
        the mapped seed folders (or the made seeds); without one, over dense flat seeds.
        """
        from evomerge.spaces.recipe import RecipeSection
        from evomerge.spaces.recipe_fitness import RecipeFitness
        from evomerge.spaces.resident_recipe import ResidentRecipe

        section = RecipeSection.model_validate(recipe["section"])
        tensors = self._resident()
        try:
            if tensors is not None:
                layout = self._call("param_layout")
                store = on_device(
                    self.lineage_store(recipe), layout, self.device, self.seeds_on_device
                )
                self.recipe = ResidentRecipe(section, layout, store, tensors)
                self.resident = tensors
                self.space = self.recipe.space
                self._recipe_statistics(self.fitness, store, self.recipe.bounds)
                return
            seeds = self.make_seeds(recipe["count"], recipe["seed"], recipe["options"])
            self.fitness = RecipeFitness(self.fitness, section, torch.from_numpy(seeds))
            self._recipe_statistics(self.fitness.inner, None, self.fitness.seeds)
        except ValueError as exc:
            raise PluginError(f"recipe: {exc}", exit_code=2) from None
        self.space = self.fitness.space
        self.fitness.setup(self.device)

    def _recipe_statistics(self, plugin, store, seeds) -> None:
        """Data-aware recipes: each merged seed's statistics, computed once at set-up."""
        from evomerge.ops.statistics import per_seed

        space = self.recipe.space if self.recipe is not None else self.fitness.space
        kind = space.method.statistics
        if kind is None:
            return
        if store is None:  # dense seeds (K, N)
            flats = [seeds[m].float() for m in space.models]
        else:  # mapped seeds: one tensor at a time into one flat vector, when it is needed

            def flat(m):
                return lambda: torch.cat([store.piece(m, a, b).float() for a, b in seeds])

            flats = [flat(m) for m in space.models]
        space.attach_statistics(per_seed(plugin, kind, space.section.statistics, flats))

    def _call(self, method, *args, **kwargs):
        try:
            return getattr(self.fitness, method)(*args, **kwargs)
        except EvomergeError:
            raise
        except (Exception, SystemExit) as exc:  # sys.exit() in a plug-in must not end the run
            raise PluginError(f"fitness {self.name}: {method}() raised {_describe(exc)}") from exc

    def info(self) -> dict:
        f = self.fitness
        return {
            "num_params": int(f.num_params if self.recipe is None else self.space.dim),
            "num_examples": int(f.num_examples),
            "score_name": str(f.score_name),
            "nonnegative": bool(f.nonnegative),
            "groups": self._groups(),
            **self._recipe_info(),
        }

    def _groups(self) -> dict[str, list[int]]:
        inner = self.plugin
        groups = self._call_on(inner, "example_groups")
        try:
            out = {str(k): [int(i) for i in v] for k, v in dict(groups).items()}
        except (TypeError, ValueError):
            raise PluginError(
                f"fitness {self.name}: example_groups() must map names to lists of example ids"
            ) from None
        bad = [k for k, v in out.items() if not v or min(v) < 0 or max(v) >= inner.num_examples]
        if bad:
            raise PluginError(
                f"fitness {self.name}: example group '{bad[0]}' is empty or has ids outside "
                f"0..{inner.num_examples - 1}"
            )
        return out

    def _call_on(self, obj, method, *args):
        try:
            return getattr(obj, method)(*args)
        except EvomergeError:
            raise
        except (Exception, SystemExit) as exc:  # sys.exit() in a plug-in must not end the run
            raise PluginError(f"fitness {self.name}: {method}() raised {_describe(exc)}") from exc

    def _recipe_info(self) -> dict:
        if self.space is None:
            return {}
        return {
            "initial": self.space.initial(),
            "layout": self.space.layout,
            "num_seeds": len(self.space.models) + (self.space.section.base is not None),
        }

    def dense_rows(self, params):
        """Lineage genomes materialised over this worker's seeds; dense rows as they are."""
        from evomerge.spaces.genomes import LineageBatch, materialize_batch
        from evomerge.spaces.lineage import Lineage

        if isinstance(params, Lineage):
            params = LineageBatch([params])
        if isinstance(params, LineageBatch):
            if self.lineage_seeds is None:
                raise PluginError("lineage genomes need seeds: this worker was set up without")
            return materialize_batch(params, self.lineage_seeds)
        return params

    def score(self, params: np.ndarray, example_ids: np.ndarray | None = None) -> np.ndarray:
        """Score ``(B, num_params)`` candidates; returns checked ``(B, E)`` float32 scores.

        Lineage genomes are materialised and scored one at a time, so a worker holds one
        candidate's parameters, not a batch of them (scores never depend on the batch); with a
        resident model they are written into it in place and scored by ``score_loaded``.
        """
        from evomerge.spaces.genomes import LineageBatch
        from evomerge.spaces.lineage import Lineage

        if isinstance(params, Lineage):
            params = LineageBatch([params])
        if self.recipe is not None:  # gene rows, each merged into the resident model
            rows = np.asarray(params, dtype=np.float32).reshape(-1, self.space.dim)
            return np.concatenate([self._score_one(g, example_ids) for g in rows])
        if isinstance(params, LineageBatch) and (len(params) > 1 or self.resident is not None):
            return np.concatenate([self._score_one(m, example_ids) for m in params])
        p = aligned_rows(self.dense_rows(params)).to(self.device)
        ids = None if example_ids is None else torch.as_tensor(example_ids).to(self.device)
        with torch.no_grad():
            out = self._call("score", p, ids)
        return self._checked(out, len(p), ids)

    def _score_one(self, genome, example_ids) -> np.ndarray:
        from evomerge.spaces.genomes import LineageBatch

        if self.resident is None:
            return self.score(LineageBatch([genome]), example_ids)
        ids = None if example_ids is None else torch.as_tensor(example_ids).to(self.device)
        with torch.no_grad():
            self._load(genome)
            out = self._call("score_loaded", ids)
        if isinstance(out, torch.Tensor | np.ndarray) and out.ndim == 1:
            out = out[None]
        return self._checked(out, 1, ids, "score_loaded")

    def _load(self, genome) -> None:
        if self.recipe is not None:
            try:
                self.recipe.load(np.asarray(genome, dtype=np.float64).reshape(-1).tolist())
            except ValueError as exc:
                raise PluginError(f"recipe: {_describe(exc)}") from None
            return
        try:
            load_into(genome, self.load_seeds, self.resident)
        except (ValueError, RuntimeError) as exc:
            raise PluginError(
                f"fitness {self.name}: cannot load a lineage into resident_tensors() "
                f"({_describe(exc)}); they must be param_layout()'s tensors, in order"
            ) from None

    def _checked(self, out, rows: int, ids, method: str = "score") -> np.ndarray:
        expected = (rows, self.fitness.num_examples if ids is None else len(ids))
        if not isinstance(out, torch.Tensor | np.ndarray) or tuple(out.shape) != expected:
            got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise PluginError(
                f"fitness {self.name}: {method}() returned {got} for {expected[0]} candidates; "
                f"expected shape {expected} (one score per candidate and example)"
            )
        out = torch.as_tensor(out).detach().to("cpu", torch.float32).numpy()
        bad = ~np.isfinite(out)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise PluginError(
                f"fitness {self.name}: {method}() returned {out[row, col]} for candidate {row}, "
                f"example {col}; scores must be finite numbers"
            )
        return out

    def metrics(self, params: np.ndarray) -> dict[str, float]:
        from evomerge.spaces.genomes import LineageBatch
        from evomerge.spaces.lineage import Lineage

        if isinstance(params, LineageBatch):
            params = params[0]
        with torch.no_grad():
            resident = isinstance(params, Lineage) and self.resident is not None
            if self.recipe is not None or resident:
                self._load(params)
                out = self._call("metrics_loaded")
            else:
                p = torch.from_numpy(np.require(self.dense_rows(params), np.float32, ["C", "W"]))
                out = self._call("metrics", p.to(self.device))
        try:
            return {str(k): float(v) for k, v in dict(out).items()}
        except (TypeError, ValueError):
            raise PluginError(
                f"fitness {self.name}: metrics() must return a mapping of names to numbers"
            ) from None

    def make_seeds(self, count: int, seed: int, options: dict) -> np.ndarray:
        try:
            out = self.fitness.make_seeds(count, seed, **options)
        except NotImplementedError as exc:
            raise PluginError(f"seeds.kind: {exc}", exit_code=2) from None
        except TypeError as exc:
            raise PluginError(
                f"seeds.options: {self.name}.make_seeds(): {exc}", exit_code=2
            ) from None
        except Exception as exc:
            raise PluginError(f"fitness {self.name}: make_seeds() raised {_describe(exc)}") from exc
        out = torch.as_tensor(out).detach().to("cpu", torch.float32)
        expected = (count, self.fitness.num_params)
        if tuple(out.shape) != expected:
            raise PluginError(
                f"fitness {self.name}: make_seeds() returned {tuple(out.shape)}, "
                f"expected {expected}"
            )
        return out.numpy()
