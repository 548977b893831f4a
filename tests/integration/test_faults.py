"""The fault-injection suite (``loadtests/faults.py``) against the real stack, on both servers.

Redis killed and restarted under load, the model host killed under load (``milo-voice serve``
starts it again), a request that fails inside the model among seven that do not, and chat and
TTS streams abandoned after their first piece. The goals of each are held here; the figures
are in docs/faults.md (``python -m loadtests.faults``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from api_facade.voice.speech import PIECES_AHEAD
from loadtests.faults import Outcome, run_suite, table

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("server", ["pytriton", "tritonserver"])
def test_faults_never_become_500s_hangs_or_losses(server: str, embedded_dir: Path, tmp_path: Path) -> None:
    outcomes, left = run_suite(server, ["redis", "host", "model-fault", "abandoned"], tmp_path)
    print(table(outcomes, {server: left}))
    by_name: dict[str, Outcome] = {o.scenario: o for o in outcomes}
    for outcome in outcomes:
        assert outcome.unplanned_5xx == 0, outcome
        assert outcome.over_timeout == 0, outcome
        assert outcome.sessions_lost == 0 and outcome.tokens_lost == 0, outcome
    assert left == [], "the stopped stack left processes or shared memory behind"

    redis = by_name["redis"]
    # Tokens fail closed while Redis is away: every refusal is a 503 with Retry-After.
    assert set(redis.notes["during_outage"]) == {"503 store_unavailable"}, redis
    assert redis.recovery_s is not None and redis.recovery_s <= 5, redis
    # The outage is logged once (and once more per 30 s), not once per request refused.
    assert redis.notes["error_log_lines"] <= 3, redis

    host = by_name["host"]
    assert set(host.statuses) <= {"200", "503 model_unavailable"}, host
    assert host.notes["ready_503_after_s"] is not None and host.notes["ready_503_after_s"] <= 5, host
    assert host.recovery_s is not None and host.recovery_s <= 5, host
    assert host.notes["error_log_lines"] <= 5, host

    fault = by_name["model-fault"]
    assert fault.notes["failing_request"] == {"422 invalid_input": 3}, fault
    assert fault.notes["batch_mates_failed"] == 0, fault

    abandoned = by_name["abandoned"]
    # A stream read to the end says every piece of its text; one abandoned after its first piece
    # says at most that piece, the pieces in flight when the client went, and the one the facade
    # asked for as the next piece came in; the pieces not yet asked for are never synthesised.
    pieces = abandoned.notes["tts_pieces"]
    assert pieces["whole"] == pieces["in_the_text"], pieces
    assert 1 <= pieces["abandoned"] <= 1 + PIECES_AHEAD + 1, pieces
    # Cancellation reaches the model: an abandoned stream costs the host a fraction of a whole one.
    for stream in ("chat_cpu_s", "tts_cpu_s"):
        costs = abandoned.notes[stream]
        assert costs["whole"] > 0 and costs["abandoned"] < 0.5 * costs["whole"], (stream, costs)
