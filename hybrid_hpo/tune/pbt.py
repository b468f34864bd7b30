"""Population-based training over the meta-settings that inherits the inner state (``scheduler: pbt``).

Ray Tune's PopulationBasedTraining (Jaderberg et al. 2017) runs the sweep's ``num_trials`` trials
as a population (best with ``max_concurrent`` = ``num_trials``). Every ``pbt.perturbation_interval``
epochs, a trial in the bottom ``pbt.quantile_fraction`` of the population by the current selection
metric (``metric``, e.g. sel_loss) *exploits* a trial of the top fraction: it restores that trial's
checkpoint — the weights, all λ (millions for per-weight decays), both optimizers' moments, the
batch generator and the epoch history — and then *explores*: each searched meta-setting is
multiplied by 0.8 or 1.2 (integers rounded), or with probability ``pbt.resample_probability``
drawn anew from its range, and clipped to its range (:class:`ClipToSpace`). The exploited trial
then trains with the new learning rates (:meth:`~hybrid_hpo.bilevel.BilevelTrainer.load_state_dict`
keeps the config's), solver options and inner steps.

PBT ranks trials by the *current* metric, not the best-so-far: a trial copies another's present
state, so the present is what must be good. The searcher and the pick still use the best-so-far
``<metric>_best`` like every other sweep (:mod:`hybrid_hpo.objective`).

Searcher: Ray refuses a search algorithm with PBT (the population's configs come from PBT itself).
The first configs are drawn by Ray's BasicVariantGenerator from the search space (seeded by the
spec's ``seed``; ``initial_points`` first), and the Optuna study still records every trial:
:class:`StudyRecorder` (a Tune callback) enqueues each trial's initial settings, asks for it and
passes its results to the sweep's :class:`~hybrid_hpo.tune.search.RecordingOptunaSearch` (same
intermediate values, user attributes, end states and pictures as any sweep); the settings a trial
ended with after its mutations are its user attributes ``final.<setting>``.

Only meta-settings that keep the data and the shapes of weights and λ can change mid-run
(:data:`MUTABLE`, and any ``solver.<option>``): :func:`check_mutable` refuses others. A PBT sweep
cannot be resumed (its population state is Ray's scheduler, not in the study).

``pbt.synch: true`` runs Ray's synchronous PBT: each perturbation point waits for the whole
population (trials pause and free their resources), so exploits do not depend on timing and the
population need not fit at once. Each trial reports its ``lineage`` (:class:`~hybrid_hpo.tune.trainable.Exploit`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hybrid_hpo.config import SOLVER_PREFIX

MUTABLE: tuple[str, ...] = ("inner_lr", "hyper_lr", "inner_steps", "batch_size", "fixed_decay", "fixed_dropout",
                            "diverged_policy")
"""Searched settings PBT may change mid-run (besides ``solver.<option>``): the checkpoint of one
trial then still fits another's data, model and λ."""
NUM_TO_KEEP = 4  # checkpoints kept per trial: Ray warns that 2 can delete one a trial is about to exploit


def check_mutable(keys: list[str]) -> str | None:
    """The first searched key PBT cannot change mid-run, or None."""
    return next((key for key in keys if key not in MUTABLE and not key.startswith(SOLVER_PREFIX)), None)


def ray_domains(space: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's distributions as Ray Tune domains (initial draws and PBT's resampling)."""
    from ray import tune

    domains = {}
    for key, dist in space.items():
        if dist.type == "choice":
            domains[key] = tune.choice(list(dist.values))
        elif dist.type == "int":
            domains[key] = (tune.lograndint if dist.log else tune.randint)(dist.low, dist.high + 1)
        else:
            log = dist.type == "loguniform" or getattr(dist, "log", False)
            domains[key] = (tune.loguniform if log else tune.uniform)(dist.low, dist.high)
    return domains


class ClipToSpace:
    """PBT's ``custom_explore_fn``: a perturbed value back into its range, integers as ``int``
    (``inner_lr`` · 1.2 may leave the searched range; Ray does not clip)."""

    def __init__(self, space: Mapping[str, Any]) -> None:
        self.bounds = {key: (dist.low, dist.high, dist.type == "int") for key, dist in space.items()
                       if dist.type != "choice"}

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for key, (low, high, integer) in self.bounds.items():
            value = min(max(config[key], low), high)
            config[key] = int(round(value)) if integer else float(value)
        return config


def make_scheduler(spec):
    """Ray's PopulationBasedTraining for ``spec`` (a SweepSpec with ``scheduler: pbt``)."""
    from ray.tune.schedulers import PopulationBasedTraining

    return PopulationBasedTraining(
        time_attr="training_iteration", metric=spec.metric, mode=spec.mode,
        perturbation_interval=spec.pbt.perturbation_interval, hyperparam_mutations=ray_domains(spec.search),
        quantile_fraction=spec.pbt.quantile_fraction, resample_probability=spec.pbt.resample_probability,
        custom_explore_fn=ClipToSpace(spec.search), synch=spec.pbt.synch)


def make_search_alg(spec, max_concurrent: int):
    """The population's first configs: random draws from the space, ``initial_points`` first."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(points_to_evaluate=[dict(point) for point in spec.initial_points] or None,
                                 max_concurrent=max_concurrent, random_state=spec.seed)


def study_recorder(searcher, keys: list[str]):
    """A :class:`StudyRecorder` for ``searcher`` (a RecordingOptunaSearch) and the searched ``keys``."""
    from ray import tune

    class StudyRecorder(tune.Callback):
        """Tells the Optuna study about every PBT trial (module docstring); runs in the driver."""

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            if trial.trial_id not in searcher._ot_trials:  # Ray's OptunaSearch keeps no public map
                searcher.study.enqueue_trial({key: trial.config[key] for key in keys})
                searcher.suggest(trial.trial_id)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            searcher.on_trial_result(trial.trial_id, result)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._end(trial, error=False)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._end(trial, error=True)

        def _end(self, trial, error: bool) -> None:
            from ray.tune.utils import flatten_dict

            if trial.trial_id in searcher._ot_trials and trial.trial_id not in searcher._completed_trials:
                ot_trial = searcher._ot_trials[trial.trial_id]
                for key in keys:
                    value = trial.config.get(key)
                    if isinstance(value, (int, float, str)) and not (isinstance(value, float) and math.isnan(value)):
                        ot_trial.set_user_attr(f"final.{key}", value)
            searcher.on_trial_complete(trial.trial_id, flatten_dict(trial.last_result or {}) or None, error=error)

    return StudyRecorder()


def result_log():
    """A Tune callback that keeps, in the driver, every result each trial reported (flattened, as
    Ray's ``metrics_dataframe`` rows), as ``histories``: trial id -> results in order.

    A PBT sweep's histories come from it, not from the trials' result files: Ray starts a trial's
    ``result.json`` / ``progress.csv`` afresh when it restarts the trial on a new actor, which PBT does
    whenever it pauses trials, so the files lose epochs (a compare's PBT runs missed ~¼ of theirs).
    PBT sweeps cannot be resumed, so the driver sees every result of the sweep.
    """
    from ray import tune
    from ray.tune.utils import flatten_dict

    class ResultLog(tune.Callback):
        """Every result of every trial, as it reaches the driver."""

        def __init__(self) -> None:
            self.histories: dict[str, list[dict[str, Any]]] = {}

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self.histories.setdefault(trial.trial_id, []).append(flatten_dict(result))

    return ResultLog()
