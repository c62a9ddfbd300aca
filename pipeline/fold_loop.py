"""The fold loop: one fold job per fold of an experiment, for every kind of data, then the gathering.

:func:`run_folds` is the training stage the queue calls. It chooses the fold
strategy (:mod:`pipeline.fold_strategies`: clips, or crops of long recordings
with event boxes), checks the settings before any fold trains, skips folds
finished in an earlier run (their ``done.json`` written; their saved
predictions are read back), runs a :class:`pipeline.fold_job.FoldJob` for
each other fold and gathers OOF and test predictions
(:func:`pipeline.predict.collect_folds`). The jobs are independent: each
reads only the cache and its own fold folder.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from pipeline import io, layout
from pipeline.errors import DataError

log = logging.getLogger(__name__)


def fold_members(dataset, cache, folds: pd.DataFrame):
    """``(ids, fold_arr, train_table)``: the cached training ids that have a fold, in dataset order,
    each one's fold number, and the dataset's training table indexed by id."""
    fold_of = dict(zip(folds["id"], folds["fold"]))
    ids = [i for i in cache.ids("train") if i in fold_of]
    order = {i: n for n, i in enumerate(dataset.train["id"])}
    ids.sort(key=order.__getitem__)
    return ids, np.array([fold_of[i] for i in ids]), dataset.train.set_index("id")


@dataclass(frozen=True, eq=False)
class FoldPlan:
    """An experiment's folds, ready to become jobs: ids in dataset order with their folds and label rows."""

    exp: object  # pipeline.config.Experiment
    strategy: str  # a name in pipeline.schema.FOLD_STRATEGIES
    unit: str  # what one example is, for messages: clips, recordings
    cache_dir: str
    exp_dir: str
    task: str
    targets: Tuple[str, ...]
    ids: Tuple[str, ...]
    fold_arr: np.ndarray  # [n] fold of each id
    labels: np.ndarray  # [n, L] the strategy's label rows of ids
    y: np.ndarray  # [n, C] their targets (NaN: unknown)
    test_ids: Tuple[str, ...]
    memory: object  # pipeline.memory.InputPlan: cache the examples in memory or stream them
    teacher: dict = dataclasses.field(default_factory=dict)  # a student's FoldJob fields (pipeline.pseudo)

    def job(self, k: int):
        """The :class:`pipeline.fold_job.FoldJob` of fold ``k``: training ids outside fold ``k``, validation ids in it.

        Raises DataError when either side is empty.
        """
        from pipeline.fold_job import FoldJob

        exp = self.exp
        tr, va = np.flatnonzero(self.fold_arr != k), np.flatnonzero(self.fold_arr == k)
        if len(tr) == 0 or len(va) == 0:
            raise DataError(f"fold {k} has no {'training' if len(tr) == 0 else 'validation'} {self.unit} left "
                                f"after skipping bad audio")
        return FoldJob(
            name=exp.name, fold=k, n_folds=exp.folds.n_splits, strategy=self.strategy, cache_dir=self.cache_dir,
            exp_dir=self.exp_dir, task=self.task, targets=self.targets, features=exp.features, model=exp.model,
            loss=exp.loss, schedule=exp.schedule, audio=exp.audio, train=exp.train, augment=exp.augment,
            crops=exp.crops, predict=exp.predict, train_ids=tuple(self.ids[i] for i in tr),
            train_labels=self.labels[tr], train_targets=self.y[tr], valid_ids=tuple(self.ids[i] for i in va),
            valid_labels=self.labels[va], valid_targets=self.y[va], test_ids=self.test_ids,
            in_memory=self.memory.in_memory,
            **self.teacher,
        )


def plan_folds(exp, dataset, cache, folds: pd.DataFrame, exp_dir: str, teacher_dir: Optional[str] = None,
               teacher_cache=None, memory_budget: Optional[int] = None) -> FoldPlan:
    """Choose the fold strategy, check the settings before any fold trains, cut the label rows and choose
    between caching the examples in memory and streaming them (:func:`pipeline.memory.input_plan`).

    teacher_dir, teacher_cache : a student's teacher folder and (``on: unknown``) its FeatureCache.
    memory_budget : bytes for a fold job's input (``execution.memory_budget_gb``); None: the default budget.
    """
    from pipeline.fold_strategies import strategy_name
    from pipeline.pseudo import teacher_fields
    from pipeline.schema import FOLD_STRATEGIES
    from pipeline.losses import make_loss
    from pipeline.models.build import check_model
    from pipeline.memory import input_plan

    name = strategy_name(dataset)
    strategy = FOLD_STRATEGIES[name].load()()
    task, targets = dataset.task, list(dataset.targets)
    ids, fold_arr, train_table = fold_members(dataset, cache, folds)

    # The queue's settings were checked when it was read (pipeline.config_checks); what needs the data or
    # Keras fails here, before any fold trains: an Xception layer name or weights file, the loss for the task.
    check_model(exp.model.name, exp.model.params)
    make_loss(exp.loss.name, exp.loss.params, task)

    rows = train_table.loc[ids]
    labels = strategy.label_rows(exp, rows.reset_index(), targets)
    memory = input_plan(strategy.memory_needs(exp, cache.shape, len(ids), cache.count("test"), labels.shape[1],
                                              len(targets)), memory_budget)
    log.info("%s: %d training %s in %d folds; input %s%s", exp.name, len(ids), strategy.unit, exp.folds.n_splits,
             memory.describe(), strategy.describe(exp, cache.shape))
    if memory.held > memory.budget:
        log.warning("%s: even streamed, the input holds about %.2f GiB, over the %.2f GiB budget: lower "
                    "train.shuffle_buffer (%d %s now) or train.batch_size to hold less", exp.name,
                    memory.held / 2**30, memory.budget / 2**30, memory.needs.shuffle_elements, strategy.unit)
    return FoldPlan(exp=exp, strategy=name, unit=strategy.unit, cache_dir=cache.folder, exp_dir=exp_dir, task=task,
                    targets=tuple(targets), ids=tuple(ids), fold_arr=fold_arr,
                    labels=labels,
                    y=rows[targets].to_numpy(np.float32), test_ids=tuple(cache.ids("test")), memory=memory,
                    teacher=teacher_fields(exp, teacher_dir, teacher_cache, strategy))


def run_folds(exp, dataset, cache, folds: pd.DataFrame, exp_dir: str, teacher_dir: Optional[str] = None,
              teacher_cache=None, memory_budget: Optional[int] = None) -> Tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    """Train every fold of an experiment (skipping finished ones) and collect predictions.

    teacher_dir, teacher_cache, memory_budget : see :func:`plan_folds`.

    Each fold runs as a :class:`pipeline.fold_job.FoldJob` in this process, one
    after the other, under the experiment's strategy, dtype policy and XLA
    setting (entered by the job). (A queue with ``execution.jobs`` > 1 runs
    the jobs of :func:`pending_folds` in a pool instead: :mod:`pipeline.scheduler`.)

    Returns (oof DataFrame ``id, fold, <targets>, <pred columns>`` in manifest order,
    test DataFrame ``id, <pred columns>`` averaged over folds, or None without a test set).
    """
    from pipeline.fold_job import run_fold_job

    plan = plan_folds(exp, dataset, cache, folds, exp_dir, teacher_dir, teacher_cache, memory_budget)
    return gather_folds(plan, {k: run_fold_job(plan.job(k)) for k in pending_folds(plan)})


def pending_folds(plan: FoldPlan) -> List[int]:
    """The folds of ``plan`` not finished in an earlier run (no ``done.json``), in fold order."""
    n = plan.exp.folds.n_splits
    pending = []
    for k in range(n):
        if io.isfile(layout.fold_file(plan.exp_dir, k, layout.DONE)):
            log.info("%s fold %d/%d: finished earlier; skipped", plan.exp.name, k + 1, n)
        else:
            pending.append(k)
    return pending


def gather_folds(plan: FoldPlan, fresh: Dict[int, Tuple[pd.DataFrame, Optional[pd.DataFrame]]]
                 ) -> Tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    """The experiment's (oof, test) from every fold, in fold order: ``fresh`` holds the (oof, test) of the folds
    trained in this run, the others' saved predictions are read back. So the result never depends on which
    folds ran where or finished first."""
    from pipeline.fold_job import finished_fold
    from pipeline.predict import collect_folds

    oof_parts, test_parts = [], []
    for k in range(plan.exp.folds.n_splits):
        oof, test = fresh[k] if k in fresh else finished_fold(plan.exp_dir, k, with_test=bool(plan.test_ids))
        oof_parts.append(oof)
        if test is not None:
            test_parts.append(test)
    return collect_folds(oof_parts, test_parts, list(plan.ids), list(plan.test_ids),
                         layout.prediction_columns(plan.targets, plan.task))
