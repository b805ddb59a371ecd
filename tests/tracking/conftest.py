"""The tracked training of :mod:`tests.tracking.tracked_training`, run once per session."""

from __future__ import annotations

import pytest
from ignite.engine import Events

from tests.mlflow_store import copy_store
from tests.tracking.tracked_training import EXPERIMENT, Tracked, build_engines


@pytest.fixture(scope="session")
def tracked(tmp_path_factory, empty_store) -> Tracked:
    """Two epochs of the tiny training, validated after each; the MLflow run and the handlers afterwards."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("tracked")
    uri = copy_store(empty_store, root)
    trainer, evaluator, handlers = build_engines(root, uri)
    first: dict[int, int] = {}

    def keep_first_choice(engine) -> None:  # attached after the overlay handler, so it runs after it
        if not first:
            first.update(handlers["overlay"].slices)

    evaluator.add_event_handler(Events.EPOCH_COMPLETED, keep_first_choice)
    trainer.run()
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    return Tracked(
        root=root,
        uri=uri,
        run_id=run.info.run_id,
        overlay=handlers["overlay"],
        curves=handlers["curves"],
        summary=handlers["summary"],
        network=handlers["network"],
        slices_after_first_validation=first,
    )
