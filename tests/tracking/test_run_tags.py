"""RunTagsHandler: tags on the run, so runs can be filtered in MLflow."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from mskd.tracking import MlflowRun
from mskd.tracking.run_tags import RunTagsHandler, runs_table_view
from tests.tracking.tracked_training import EXPERIMENT, VIEW


def test_tags_are_set_and_filterable(tracked):
    client = MlflowClient(tracking_uri=tracked.uri)
    tags = client.get_run(tracked.run_id).data.tags
    assert {k: tags.get(k) for k in ("task", "teacher", "method", "seed")} == {
        "task": "synapse",
        "teacher": "conv",
        "method": "teacher",
        "seed": "0",
    }
    assert "student" not in tags  # None values are left out
    experiment = client.get_experiment_by_name(EXPERIMENT)
    found = client.search_runs([experiment.experiment_id], filter_string="tags.teacher = 'conv' and tags.seed = '0'")
    assert [r.info.run_id for r in found] == [tracked.run_id]


def test_experiment_tags_are_set(tracked):
    client = MlflowClient(tracking_uri=tracked.uri)
    tags = client.get_experiment_by_name(EXPERIMENT).tags
    assert tags["mlflow.sharedViewState.mskd"] == VIEW and "unset" not in tags


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, {"selectedColumns": []}),
        (
            {"metrics": ["a", "b"], "params": ["p"], "tags": ["t"]},
            {"selectedColumns": ["metrics.`a`", "metrics.`b`", "params.`p`", "tags.`t`"]},
        ),
        (
            {"metrics": ["d"], "order_by": "d"},
            {"selectedColumns": ["metrics.`d`"], "orderByKey": "metrics.`d`", "orderByAsc": False},
        ),
    ],
)
def test_runs_table_view(kwargs, expected):
    assert json.loads(runs_table_view(**kwargs)) == expected


@pytest.mark.parametrize("tags, match", [({}, "at least one"), ({"": 1}, "non-empty")])
def test_bad_tags(tags, match):
    with pytest.raises(ValueError, match=match):
        RunTagsHandler(tags, MlflowRun("sqlite:///x.db", "e", "r"))


def test_an_evaluation_is_nested_under_the_newest_run_of_its_trained_model(mlflow_uri):
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment_id = client.create_experiment("nest")
    older = client.create_run(experiment_id, run_name="espnet-baseline-s0", start_time=1000).info.run_id
    newer = client.create_run(experiment_id, run_name="espnet-baseline-s0", start_time=2000).info.run_id
    test = client.create_run(experiment_id, run_name="espnet-baseline-s0-test", start_time=3000).info.run_id
    run = MlflowRun(mlflow_uri, "nest", "espnet-baseline-s0-test", run_id=test)
    RunTagsHandler({"role": "student"}, run, parent_run_name="espnet-baseline-s0").log_once()
    tags = client.get_run(test).data.tags
    assert tags["mlflow.parentRunId"] == newer != older and tags["role"] == "student"


def test_a_model_trained_elsewhere_leaves_the_evaluation_unnested(mlflow_uri):
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment_id = client.create_experiment("nest")
    test = client.create_run(experiment_id, run_name="m-test").info.run_id
    run = MlflowRun(mlflow_uri, "nest", "m-test", run_id=test)
    RunTagsHandler({"role": "student"}, run, parent_run_name="m").log_once()
    assert "mlflow.parentRunId" not in client.get_run(test).data.tags
