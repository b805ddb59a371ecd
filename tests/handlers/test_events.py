"""A handler attached twice runs its steps once."""

from ignite.engine import Engine, Events

from mskd.handlers.events import attach_once


def test_steps_are_added_once():
    calls = []
    engine = Engine(lambda e, b: None)

    def step(engine):
        calls.append(engine.state.epoch)

    attach_once(engine, (Events.EPOCH_COMPLETED, step))
    attach_once(engine, (Events.EPOCH_COMPLETED, step), (Events.STARTED, step))
    engine.run([0], max_epochs=2)
    assert calls == [0, 1, 2]  # STARTED once (epoch 0), then each epoch once
