"""A test-only handler that halts a training at a chosen iteration, so that a test can kill the process there."""

import time
from pathlib import Path

from ignite.engine import Engine, Events


class PauseAt:
    """At the end of iteration ``iteration`` (after the handlers attached before it, checkpoints included), write
    ``marker`` and sleep ``seconds``: the process is then idle mid-epoch, for the test to ``SIGKILL`` it."""

    def __init__(self, iteration: int, marker: str, seconds: float = 300.0) -> None:
        self.iteration, self.marker, self.seconds = iteration, Path(marker), seconds

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.iteration), self.pause)

    def pause(self, engine: Engine) -> None:
        self.marker.write_text(str(engine.state.iteration))
        time.sleep(self.seconds)
