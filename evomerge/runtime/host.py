"""One fitness plug-in instance, set up once, behind checks that turn its failures into one line.

The same host runs in-process (local evaluator) and inside each Ray actor (ray evaluator), so
both paths score candidates with identical code.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from evomerge.core.contracts import export_forms, resident_tensors, tensor_stream
from evomerge.core.errors import ConfigError, EvomergeError, PluginError
from evomerge.core.extensions import load as load_extensions
from evomerge.core.plugin_loader import describe, load_fitness
from evomerge.spaces import SPACES
from evomerge.tensors.seed_store import DenseSeeds, MappedSeeds, from_description


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


def score_range(plugin, name: str) -> list[float] | None:
    """The plug-in's declared ``score_range`` as ``[low, high]`` (None: unbounded)."""
    declared = getattr(plugin, "score_range", None)
    if declared is None:
        return None
    try:
        low, high = (float(v) for v in declared)
    except (TypeError, ValueError):
        raise PluginError(
            f"fitness {name}: score_range must be (low, high) numbers or None, got {declared!r}"
        ) from None
    if not low < high:
        raise PluginError(f"fitness {name}: score_range ({low}, {high}) needs low < high")
    return [low, high]


class FitnessHost:
    """Loads the plug-in named by ``spec``, calls ``setup(device)``, and checks every result.

    ``space`` says what the candidates are (:func:`evomerge.run.loop.space_spec`: the space's
    name, or None for the plug-in's own, and how the seeds are made); the host builds that
    space's worker (:class:`~evomerge.core.contracts.SpaceWorker`), which realises each batch
    of candidates as flat rows or in the plug-in's resident model. ``seeds`` describes seeds
    the driver already made (on Ray, one object-store copy per node), or None.
    """

    def __init__(
        self,
        spec,
        options,
        device="cpu",
        source=None,
        threads=None,
        space=None,
        seeds=None,
        seeds_on_device="auto",
        extensions=(),
    ):
        load_extensions(extensions)  # the user's strategies and merge methods, before all else
        if threads:
            torch.set_num_threads(int(threads))
        self.spec = spec
        self.name = spec.rsplit("/", 1)[-1]
        self.plugin = load_fitness(spec, options, source=source)
        self.device = check_device(device)
        self.seeds_on_device = seeds_on_device
        self.call("setup", self.device)
        f = self.plugin
        if f.num_params <= 0 or f.num_examples <= 0:
            raise PluginError(
                f"fitness {self.name}: setup() must set num_params and num_examples > 0 "
                f"(got {f.num_params}, {f.num_examples})"
            )
        spec_ = dict(space or {})
        self.space_name = spec_.get("name") or getattr(f, "space", None) or "dense"
        self.shared_seeds = None if seeds is None else from_description(seeds)
        self.worker = SPACES.get(self.space_name).on_worker(spec_, self)

    # -- what space workers use ------------------------------------------------------------
    def resident(self) -> list[torch.Tensor] | None:
        """The plug-in's resident model tensors, or None when it has no resident model."""
        with self.blame("resident_tensors"):
            return resident_tensors(self.plugin)

    def streamed(self):
        """The plug-in's ``load_tensors`` when candidates stream into its model tensor by
        tensor (it has no resident tensors), else None."""
        with self.blame("resident_tensors"):
            load = tensor_stream(self.plugin)
        if load is None:
            return None

        def stream(tensors) -> None:
            with self.blame("load_tensors"):
                load(tensors)

        return stream

    def layout(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(str(n), tuple(s)) for n, s in self.call("param_layout")]

    def seed_store(self, spec: dict):
        """The seeds a space mixes: shared by the driver, the plug-in's seed folders (mapped),
        or the seeds it makes."""
        if self.shared_seeds is not None:
            return self.shared_seeds
        return self.lineage_store(spec)

    def lineage_store(self, spec: dict):
        """The plug-in's seed folders, mapped, or the seeds it makes (``spec``: count, seed,
        options)."""
        folders = self.seed_folders(spec["count"])
        if folders is None:
            return DenseSeeds(self.make_seeds(spec["count"], spec["seed"], spec["options"]))
        return MappedSeeds(folders, self.call("param_layout"))

    def seed_folders(self, count: int, what: str = "seed folders") -> list | None:
        """The plug-in's seed folders (None: it makes its seeds), refused in one line unless
        there are ``count`` (``seeds.count``) of them."""
        folders = self.call("seed_folders")
        if folders is not None and len(folders) != count:
            raise PluginError(
                f"seeds.count is {count} but fitness {self.name} names {len(folders)} "
                f"{what}; make them agree",
                exit_code=2,
            )
        return folders

    @property
    def lineage_seeds(self):
        """The seeds this worker's candidates mix (None for spaces that mix none)."""
        return getattr(self.worker, "store", None)

    def call(self, method, *args, **kwargs):
        """The plug-in's ``method``; any failure becomes one line naming the plug-in."""
        with self.blame(method):
            return getattr(self.plugin, method)(*args, **kwargs)

    @contextmanager
    def blame(self, method: str):
        """Any failure inside (the plug-in's ``method`` at work) becomes one line naming the
        plug-in and the method; an evomerge error passes as it is."""
        try:
            yield
        except EvomergeError:
            raise
        except (Exception, SystemExit) as exc:  # sys.exit() in a plug-in must not end the run
            raise PluginError(f"fitness {self.name}: {method}() raised {describe(exc)}") from exc

    # -- description -----------------------------------------------------------------------
    def info(self) -> dict:
        f = self.plugin
        return {
            "num_params": int(f.num_params),
            "num_examples": int(f.num_examples),
            "score_name": str(f.score_name),
            "nonnegative": bool(f.nonnegative),
            "score_range": score_range(f, self.name),
            "groups": self._groups(),
            "space": self.space_name,
            **self.worker.info(),
        }

    def seed_genes(self) -> list[float]:
        """The first candidate a space's worker computes (a recipe's learnt start)."""
        seed_genes = getattr(self.worker, "seed_genes", None)
        if seed_genes is None:
            raise PluginError(f"space {self.space_name} computes no seed genes on a worker")
        return seed_genes()

    def _groups(self) -> dict[str, list[int]]:
        groups = self.call("example_groups")
        try:
            out = {str(k): [int(i) for i in v] for k, v in dict(groups).items()}
        except (TypeError, ValueError):
            raise PluginError(
                f"fitness {self.name}: example_groups() must map names to lists of example ids"
            ) from None
        n = self.plugin.num_examples
        bad = [k for k, v in out.items() if not v or min(v) < 0 or max(v) >= n]
        if bad:
            raise PluginError(
                f"fitness {self.name}: example group '{bad[0]}' is empty or has ids outside "
                f"0..{n - 1}"
            )
        return out

    # -- scoring ---------------------------------------------------------------------------
    def score(self, genomes, example_ids: np.ndarray | None = None) -> np.ndarray:
        """Checked ``(B, E)`` float32 scores of a batch of candidates of this host's space.

        The space's worker decides which candidates are realised together (a dense batch in
        one call; lineages and recipes one at a time, so a worker holds one candidate's
        parameters, not a batch of them) and how (flat rows, or the resident model).
        """
        ids = None
        if example_ids is not None:  # a copy: Ray hands arrays over read-only
            ids = torch.tensor(np.asarray(example_ids), dtype=torch.long, device=self.device)
        out = []
        with torch.no_grad():
            for batch in self.worker.batches(genomes):
                out.append(self.worker.realise(batch).score(self, ids))
        return np.concatenate(out)

    def metrics(self, genome) -> dict[str, float]:
        """Held-out metrics of one candidate."""
        with torch.no_grad():
            (batch,) = self.worker.batches(self.worker.one(genome))
            out = self.worker.realise(batch).metrics(self)
        try:
            return {str(k): float(v) for k, v in dict(out).items()}
        except (TypeError, ValueError):
            raise PluginError(
                f"fitness {self.name}: metrics() must return a mapping of names to numbers"
            ) from None

    def score_rows(self, rows: torch.Tensor, ids) -> np.ndarray:
        """The plug-in's ``score`` of flat parameter rows (see :class:`FlatRows`)."""
        p = aligned_rows(np.asarray(rows, dtype=np.float32)).to(self.device)
        return self._checked(self.call("score", p, ids), len(p), ids)

    def score_loaded(self, ids) -> np.ndarray:
        """The plug-in's ``score_loaded`` of the candidate in its resident model."""
        out = self.call("score_loaded", ids)
        if isinstance(out, torch.Tensor | np.ndarray) and out.ndim == 1:
            out = out[None]
        return self._checked(out, 1, ids, "score_loaded")

    def metrics_row(self, row: torch.Tensor):
        p = torch.from_numpy(np.require(np.asarray(row, np.float32), np.float32, ["C", "W"]))
        return self.call("metrics", p.to(self.device))

    def metrics_loaded(self):
        return self.call("metrics_loaded")

    def _checked(self, out, rows: int, ids, method: str = "score") -> np.ndarray:
        expected = (rows, self.plugin.num_examples if ids is None else len(ids))
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

    # -- seeds and export ------------------------------------------------------------------
    def make_seeds(self, count: int, seed: int, options: dict) -> np.ndarray:
        try:
            out = self.plugin.make_seeds(count, seed, **options)
        except NotImplementedError as exc:
            raise PluginError(f"seeds.kind: {exc}", exit_code=2) from None
        except TypeError as exc:
            raise PluginError(
                f"seeds.options: {self.name}.make_seeds(): {exc}", exit_code=2
            ) from None
        except Exception as exc:
            raise PluginError(f"fitness {self.name}: make_seeds() raised {describe(exc)}") from exc
        out = torch.as_tensor(out).detach().to("cpu", torch.float32)
        expected = (count, self.plugin.num_params)
        if tuple(out.shape) != expected:
            raise PluginError(
                f"fitness {self.name}: make_seeds() returned {tuple(out.shape)}, "
                f"expected {expected}"
            )
        return out.numpy()

    def export_info(self) -> dict:
        """The plug-in's ``export_info()``: files, default dtype and seed folders."""
        return dict(self.call("export_info") or {})

    def export(self, genome, out, dtype: str, doc: dict, form: str | None = None) -> dict:
        """Write one candidate as a model folder (the space's worker knows how), or in the
        ``form`` its space declares (``merged``: an adapter merged into its base)."""
        if form is None:
            with torch.no_grad():
                return self.worker.export(genome, out, dtype, doc)
        forms = export_forms(self.worker)
        if form not in forms:
            other = f"its other forms: {', '.join(forms)}" if forms else "it has no other form"
            raise EvomergeError(
                f"--{form}: space {self.space_name} exports its members in its own form only "
                f"({other}; --merged is for space adapter); drop --{form}"
            )
        with torch.no_grad():
            return self.worker.export(genome, out, dtype, doc, form=form)
