"""`mskd experiment`: a matrix of teacher / student / distillation-method / seed runs through the bundle.

An experiment file (YAML) names a bundle, the data, a teacher, the students, the methods and the seeds; every run is
the bundle's own ``monai.bundle run``, launched as a subprocess, logged to one MLflow store under one parent run, and
skipped when its result file exists (an interrupted matrix resumes). Outputs in ``output`` (default
``docs/results/<name>``): ``results.csv``, ``results.md`` and ``dice.png``.

- :mod:`~mskd.experiment.spec`: the experiment file (schema, loading, override checks), :class:`RunSpec`;
- :mod:`~mskd.experiment.plan`: run names, the plan, and the files of a workdir;
- :mod:`~mskd.experiment.runner`: data, the bundle subprocesses, their scheduling and MLflow nesting;
- :mod:`~mskd.experiment.report`: speed of learning, mean ± std over seeds, the tables and the figure.
"""

from mskd.experiment.plan import chosen_runs, plan_runs
from mskd.experiment.report import format_results, learning_speed, summarise_results
from mskd.experiment.runner import run_experiment
from mskd.experiment.spec import ExperimentError, RunSpec, load_experiment

__all__ = [
    "ExperimentError",
    "RunSpec",
    "chosen_runs",
    "format_results",
    "learning_speed",
    "load_experiment",
    "plan_runs",
    "run_experiment",
    "summarise_results",
]
