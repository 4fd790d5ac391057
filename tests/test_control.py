"""The server command's Control API client survives a busy SuperLink, within a bounded time."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

from alphafed_flwr.api.errors import TaskFailed
from alphafed_flwr.deploy import control as control_module
from alphafed_flwr.deploy.control import Control


class FlakyListRuns:
    """``ListRuns`` that fails ``failures`` times (as a SuperLink with a locked database does)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def ListRuns(self, request):  # noqa: ANN001, ANN201, N802 - Flower's method name
        self.calls += 1
        if self.calls <= self.failures:
            raise httpx.ReadError("Connection reset by peer")
        status = SimpleNamespace(status="finished", sub_status="completed", details="")
        return SimpleNamespace(run_dict={request.run_id: SimpleNamespace(status=status)})


def control_with(client: FlakyListRuns) -> Control:
    control = Control.__new__(Control)
    control.client = client
    return control


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control_module.time, "sleep", lambda seconds: None)


def test_a_status_request_that_fails_is_retried() -> None:
    client = FlakyListRuns(failures=3)
    assert control_with(client).status(7) == ("finished", "completed", "")
    assert client.calls == 4


def test_a_superlink_that_never_answers_is_reported_after_the_retry_time() -> None:
    client = FlakyListRuns(failures=10**9)
    with pytest.raises(TaskFailed, match=r"did not answer status requests for run 7 for 0s.*superlink.log"):
        control_with(client).status(7, retry_seconds=0.0)
    assert client.calls == 1
