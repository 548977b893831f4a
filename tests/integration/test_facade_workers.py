"""Several facade workers (``python -m api_facade --workers 2``, as the facade image runs) report
one set of metrics: a scrape answered by either worker counts every worker's requests, and the
workers' shared folder goes when the facade stops."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from loadtests.processes import facade_server
from tests.conftest import TritonHost, free_port, metric_value

pytestmark = pytest.mark.integration

REQUESTS = 40
PHRASE = {"text": "Veloma", "source": "mg", "target": "fr"}  # a phrasebook answer: no model call


def _workers_of(log: Path) -> tuple[Path, set[int]]:
    text = log.read_text()
    folder = Path(re.search(r"share their metrics in (\S+)", text).group(1))  # type: ignore[union-attr]
    return folder, {int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", text)}


def test_two_workers_share_one_set_of_metrics(triton_host: TritonHost, tmp_path: Path) -> None:
    log = tmp_path / "facade.log"
    env = {"MILO_TRITON_URL": triton_host.http_url, "MILO_TRITON_GRPC_URL": triton_host.grpc_url,
           "MILO_IP_RATE_LIMIT": "100000/minute", "MILO_ANONYMOUS_TIER": "premium"}  # fmt: skip
    with facade_server(log, env, workers=2) as facade:
        with httpx.Client(base_url=facade, timeout=30) as http:
            for _ in range(REQUESTS):  # new connections: the kernel spreads them over the workers
                assert httpx.post(f"{facade}/v1/translate", json=PHRASE, timeout=30).status_code == 200
            assert http.get("/health").status_code == 200
        folder, pids = _workers_of(log)
        assert len(pids) == 2
        served = {int(m) for m in re.findall(r"_(\d+)\.db$", "\n".join(p.name for p in folder.iterdir()), re.M)}
        assert served == pids, "both workers answered requests (and only they wrote metrics)"
        for _ in range(4):  # whichever worker answers the scrape reads every worker's values
            assert metric_value(facade, "milo_translation_lookups_total", outcome="phrasebook") == REQUESTS
            count = metric_value(
                facade, "milo_http_request_duration_seconds_count", route="/v1/translate", method="POST", status="200"
            )
            assert count == REQUESTS
            assert metric_value(facade, "milo_http_requests_in_flight") == 0
    assert not folder.exists()


def test_the_metrics_port_serves_every_workers_metrics(triton_host: TritonHost, tmp_path: Path) -> None:
    port = free_port()
    env = {"MILO_TRITON_URL": triton_host.http_url, "MILO_TRITON_GRPC_URL": triton_host.grpc_url,
           "MILO_METRICS_PORT": str(port), "MILO_IP_RATE_LIMIT": "100000/minute"}  # fmt: skip
    with facade_server(tmp_path / "facade.log", env, workers=2) as facade:
        for _ in range(10):
            assert httpx.post(f"{facade}/v1/translate", json=PHRASE, timeout=30).status_code == 200
        assert httpx.get(f"{facade}/metrics", timeout=10).status_code == 404
        assert metric_value(f"http://127.0.0.1:{port}", "milo_translation_lookups_total", outcome="phrasebook") == 10
