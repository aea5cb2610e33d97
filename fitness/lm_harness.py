"""lm-evaluation-harness tasks as a fitness: per-document scores of the resident candidate LM.

Users bring the tasks they already evaluate with: lm-eval YAML task configs (``dataset_path:
json`` with local ``data_files``, so it runs offline), scored document by document with the
task's own prompts, filters and metric. Needs ``pip install "evomerge[lm-eval]"`` (lm-eval
0.4). Options (``fitness.options``)::

    seeds: [models/expert-a, models/expert-b]   # as fitness/causal_lm.py
    include_path: tasks/                         # folder(s) of YAML task configs
    tasks: [my_mc_task, my_gen_task]             # task names: the search's examples
    test_tasks: [my_heldout_task]                # optional: held-out metrics
    metric: {my_gen_task: exact_match}           # optional: default, the task's first metric
    limit: 64                                    # optional: first documents of each task
    batch_size: 16
    dtype: float32
    engine: transformers                         # or vllm (see fitness/causal_lm.py)
    engine_args: {}

A task's documents are its evaluation split (test, else validation) in order; task ``i``'s
documents are example ids ``start_i .. stop_i - 1`` (:meth:`task_ranges`). A document's score
is the value the task's ``process_results`` gives it for the metric (``acc`` of a
multiple_choice task, from the loglikelihood of each choice; ``exact_match`` of a
generate_until task), after the task's first filter; it must be a number in [0, 1].
Continuations are cut from context + continuation tokenised as one text, as
``fitness/causal_lm.py`` cuts answers. The candidate is the model :class:`evomerge.kit.CausalLMBase`
builds and loads (the same resident, in-place path as ``causal_lm``). lm-eval's chat templates
are not supported, and ``loglikelihood_rolling`` scores a document in one window.

Named ``lm_harness`` so that it never shadows the ``lm_eval`` package; the old names
(``plugin: lm_eval``, ``evomerge.fitness.lm_eval:LmEval``, ``fitness/lm_eval.py:LmEval``)
still name this class (see ``evomerge.core.bundled.RENAMED``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from evomerge.kit import CausalLMBase, Example, answer_text, tokenize_example


def _lm_base():
    try:
        from lm_eval.api.model import LM
    except ImportError:
        raise ValueError(
            'fitness/lm_harness.py needs lm-eval: pip install "evomerge[lm-eval]"'
        ) from None
    return LM


class LmHarness(CausalLMBase):
    """Per-document scores of a causal LM on lm-evaluation-harness tasks."""

    def __init__(
        self,
        seeds: list[str],
        tasks: list[str],
        include_path: str | list[str],
        test_tasks: list[str] = (),
        metric: dict[str, str] | None = None,
        limit: int | None = None,
        batch_size: int = 16,
        dtype: str = "float32",
        engine: str = "transformers",
        engine_args: dict | None = None,
    ):
        _lm_base()
        if not tasks:
            raise ValueError("tasks: give at least one lm-eval task name")
        super().__init__(seeds, batch_size, dtype, engine, engine_args)
        self.task_names, self.test_names = list(tasks), list(test_tasks)
        paths = [include_path] if isinstance(include_path, str) else list(include_path)
        self.include = [str(Path(p)) for p in paths]
        for p in self.include:
            if not Path(p).exists():
                raise ValueError(f"include_path: {p} does not exist; give a folder of YAML tasks")
        self.metric_of = dict(metric or {})
        self.limit = limit

    def setup_tasks(self, folder: Path) -> None:
        """The tokenizer of ``folder``, lm-eval's ``LM`` over this model, and the tasks."""
        from lm_eval.tasks import TaskManager, get_task_dict

        self.setup_tokenizer(folder)
        self.lm = _make_lm(self)
        manager = TaskManager(include_path=self.include, include_defaults=False)
        names = list(dict.fromkeys(self.task_names + self.test_names))
        missing = [n for n in names if n not in manager.all_tasks]
        if missing:
            raise ValueError(
                f"tasks: '{missing[0]}' is not a task in {', '.join(self.include)} "
                f"(found: {', '.join(sorted(manager.all_tasks)) or 'none'})"
            )
        found = get_task_dict(names, manager)
        found = found.get("tasks", found)  # lm-eval 0.4.10+: {"tasks": ..., "groups": ...}
        self.lm_tasks, self.sizes, self.metric = {}, {}, {}
        for name in names:
            task = found[name]
            n = len(task.eval_docs)
            self.lm_tasks[name] = task
            self.sizes[name] = (
                n if self.limit is None or name in self.test_names else min(n, self.limit)
            )
            metrics = [m["metric"] for m in task.config.metric_list or []]
            metrics = metrics or list(task.aggregation())
            self.metric[name] = self.metric_of.get(name, metrics[0])
            if self.metric[name] not in metrics:
                raise ValueError(
                    f"metric.{name}: '{self.metric[name]}' is not one of the task's {metrics}"
                )
        start, self.ranges = 0, []
        for name in self.task_names:
            self.ranges.append((name, start, start + self.sizes[name]))
            start += self.sizes[name]
        self.num_examples = start

    # --- scores ---------------------------------------------------------------------------

    def score_loaded(self, example_ids: torch.Tensor | None = None) -> torch.Tensor:
        ids = (
            torch.arange(self.num_examples)
            if example_ids is None
            else torch.as_tensor(example_ids).cpu()
        )
        out = torch.empty(len(ids))
        for name, start, stop in self.ranges:
            cols = torch.nonzero((ids >= start) & (ids < stop)).squeeze(1)
            if len(cols):
                docs = (ids[cols] - start).tolist()
                scores = self._doc_scores(name, sorted(set(docs)))
                out[cols] = torch.tensor([scores[d] for d in docs])
        return out

    def metrics_loaded(self) -> dict[str, float]:
        found = {}
        for name in self.test_names:
            scores = self._doc_scores(name, list(range(self.sizes[name])))
            found[f"test_{name}_{self.metric[name]}"] = sum(scores.values()) / len(scores)
        if len(found) > 1:
            found["test_mean"] = sum(found.values()) / len(found)
        return found

    def _doc_scores(self, name: str, docs: list[int]) -> dict[int, float]:
        """Document index -> score, by lm-eval's own requests, filters and process_results."""
        task, metric = self.lm_tasks[name], self.metric[name]
        task.build_all_requests(samples=docs, rank=0, world_size=1)
        by_type: dict[str, list] = {}
        for inst in task.instances:
            inst.resps = []
            by_type.setdefault(inst.request_type, []).append(inst)
        for kind, insts in by_type.items():
            for inst, resp in zip(insts, getattr(self.lm, kind)(insts), strict=True):
                inst.resps.append(resp)
        task.apply_filters()
        key = next(iter(task.instances[0].filtered_resps))  # the task's first filter
        per_doc: dict[int, list] = {}
        for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
            per_doc.setdefault(inst.doc_id, []).append(inst)
        out = {}
        for pos, doc in task.doc_iterator(samples=docs):
            value = task.process_results(doc, [i.filtered_resps[key] for i in per_doc[pos]])
            value = value[metric]
            if not isinstance(value, int | float | bool) or not 0 <= value <= 1:
                raise ValueError(
                    f"task {name}: metric '{metric}' gives document {docs[pos]} the value "
                    f"{value!r}; a fitness needs a number in [0, 1] per document"
                )
            out[docs[pos]] = float(value)
        return out


#: The class's name before the module was renamed (``fitness/lm_eval.py:LmEval``).
LmEval = LmHarness


def _make_lm(fit):
    """lm-eval's ``LM`` interface over the fitness's resident model and tokenizer."""

    class EvomergeLM(_lm_base()):
        def loglikelihood(self, requests):
            examples = [_cut(fit, *r.args) for r in requests]
            out = []
            for batch in fit.chunks(examples):
                for found in fit.targets(batch):
                    out.append((found.logp.sum().item(), bool(found.best.all())))
            return out

        def loglikelihood_rolling(self, requests):
            return [self.loglikelihood([_Req(("", r.args[0]))])[0][0] for r in requests]

        def generate_until(self, requests):
            out = []
            for r in requests:
                context, kwargs = r.args
                stop = kwargs.get("until") or ()
                stop = (stop,) if isinstance(stop, str) else tuple(stop)
                prompt = _cut(fit, context, "").prompt
                steps = int(kwargs.get("max_gen_toks", 32))
                generated = fit.engine.generate([prompt], steps, stop)[0]
                # unstripped: the task's filters and metric decide about whitespace
                out.append(answer_text(fit.tokenizer, fit.eos_ids, generated, stop, strip=False))
            return out

    return EvomergeLM()


class _Req:
    def __init__(self, args):
        self.args = args


def _cut(fit, context: str, continuation: str) -> Example:
    """Context + continuation as one text, cut where the continuation's characters start."""
    if not context and not fit.head:
        raise ValueError("lm-eval: an empty context needs a tokenizer that adds a BOS token")
    example = {"prompt": context, "answer": continuation}
    return tokenize_example(fit.tokenizer, fit.head, example)
