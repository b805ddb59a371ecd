"""Tags on the MLflow run (task, teacher, student, method, seed, ...), so that runs can be filtered and grouped."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from monai.utils import optional_import

from mskd.tracking.artefacts import OncePerRunHandler
from mskd.tracking.run import MlflowRun

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["RunTagsHandler", "runs_table_view"]


def runs_table_view(
    metrics: Sequence[str] = (), params: Sequence[str] = (), tags: Sequence[str] = (), order_by: str | None = None
) -> str:
    """A shared view of the MLflow UI's runs table, as the value of an experiment tag ``mlflow.sharedViewState.<key>``.

    The MLflow UI shows only the run name, date and duration in its runs table until columns are picked by hand; a
    shared view names the columns. Stored as the experiment tag ``mlflow.sharedViewState.<key>`` (see
    :class:`RunTagsHandler`'s ``experiment_tags``), it opens at
    ``http://HOST:PORT/#/experiments/<id>/runs?viewStateShareKey=<key>&workflowType=machine_learning``.

    Args:
        metrics: metric columns, in order.
        params: param columns.
        tags: tag columns.
        order_by: metric to sort by (descending), e.g. ``"test_mean_dice"``; default: newest runs first.

    Returns:
        the view as JSON (the UI's ``selectedColumns``, ``orderByKey`` and ``orderByAsc``).
    """
    columns = [f"metrics.`{m}`" for m in metrics] + [f"params.`{p}`" for p in params] + [f"tags.`{t}`" for t in tags]
    view: dict[str, Any] = {"selectedColumns": columns}
    if order_by:
        view.update(orderByKey=f"metrics.`{order_by}`", orderByAsc=False)
    return json.dumps(view)


class RunTagsHandler(OncePerRunHandler):
    """Set tags on the engine's MLflow run once per engine run (MONAI's ``MLFlowHandler`` sets none).

    Tags, unlike params, can be searched with ``tags.<name> = '...'`` in the MLflow UI's search box and grouped by
    in its runs table. They are set at the first ``EPOCH_STARTED`` after ``STARTED``, when the ``MLFlowHandler`` has
    created the run whatever the order of the handlers. Values are written as strings; ``None`` values are left out.

    Args:
        tags: tag name -> value, e.g. ``{"task": "synapse", "teacher": "unet", "method": "mskd", "seed": 0}``.
        run: the workflow's MLflow run (the bundle's ``@mlflow_run``).
        experiment_tags: tags set on the run's experiment at the same time, e.g.
            ``{"mlflow.sharedViewState.mskd": runs_table_view(...)}`` (:func:`runs_table_view`).
        parent_run_name: the run this one belongs to, e.g. the training run of a test evaluation: the newest other
            run of that name in the experiment becomes its parent (``mlflow.parentRunId``), so the MLflow UI nests
            the evaluations under the model they evaluate; none of that name (a model trained elsewhere) leaves the
            run unnested.

    Raises:
        ValueError: when ``tags`` is empty or a tag name is empty.
    """

    def __init__(
        self,
        tags: Mapping[str, Any],
        run: MlflowRun,
        experiment_tags: Mapping[str, Any] | None = None,
        parent_run_name: str | None = None,
    ) -> None:
        if not tags:
            raise ValueError("tags must hold at least one name -> value")
        empty = [k for k in tags if not str(k)]
        if empty:
            raise ValueError(f"tag names must be non-empty, got {list(tags)}")
        super().__init__(run)
        self.tags = dict(tags)
        self.experiment_tags = dict(experiment_tags or {})
        self.parent_run_name = parent_run_name

    def log_once(self) -> None:
        """Set the run's tags (its parent's id among them) and the experiment's tags."""
        parent = self.mlflow.read(self._parent_run_id, default=None) if self.parent_run_name else None
        self.mlflow.set_tags({**self.tags, "mlflow.parentRunId": parent})
        if self.experiment_tags:
            self.mlflow.read(self._set_experiment_tags, default=None)

    def _parent_run_id(self) -> str | None:
        client = self.mlflow.client
        run_id = self.mlflow.run_id()
        experiment_id = client.get_run(run_id).info.experiment_id
        name = str(self.parent_run_name).replace("'", "\\'")
        found = client.search_runs(
            [experiment_id], filter_string=f"attributes.run_name = '{name}'", order_by=["attributes.start_time DESC"]
        )
        return next((r.info.run_id for r in found if r.info.run_id != run_id), None)

    def _set_experiment_tags(self) -> None:
        client = self.mlflow.client
        experiment_id = client.get_run(self.mlflow.run_id()).info.experiment_id
        for key, value in self.experiment_tags.items():
            if value is not None:
                client.set_experiment_tag(experiment_id, str(key), str(value))
