"""Draw the Grafana dashboard's panels with real data: a local stack, a real Prometheus, a Locust run.

``python -m loadtests.dashboard --users 6 --duration 3m --out docs/dashboard.png``

No Grafana build can be installed on the development machines (no package registry carries
one), so this draws each panel of ``deploy/grafana/dashboards/milo-voice.json`` itself, with
matplotlib, in the dashboard's layout: every line is the panel's own PromQL query, evaluated
by a real Prometheus (the ``prometheus`` binary of the Debian package) that scraped the stack's
Triton and facade metrics during the run with ``deploy/prometheus/rules`` loaded. In Grafana
(compose or Kubernetes) the same dashboard shows the same queries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loadtests.processes import REPO, free_port, stop, wait_ok
from loadtests.runner import local_stack, run_locust

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "milo-voice.json"
RULES = REPO / "deploy" / "prometheus" / "rules"
SCRAPE_S = 5


def prometheus_config(triton_metrics: str, facade: str) -> str:
    return json.dumps(
        {
            "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
            "rule_files": [str(RULES / "recording.yml"), str(RULES / "alerts.yml")],
            "scrape_configs": [
                {"job_name": "triton", "static_configs": [{"targets": [triton_metrics]}]},
                {"job_name": "facade", "static_configs": [{"targets": [facade]}]},
            ],
        }
    )


@contextlib.contextmanager
def prometheus(config: str, workdir: Path) -> Iterator[str]:
    """The Prometheus server on a free port, scraping what ``config`` names; yields its base URL."""
    (workdir / "prometheus.yml").write_text(config)  # JSON is YAML
    port = free_port()
    with (workdir / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_ok(f"http://127.0.0.1:{port}/-/ready", 60, process)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)


def query_range(url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": SCRAPE_S})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=30) as response:
        body = json.load(response)
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]  # type: ignore[no-any-return]


def legend(template: str, labels: dict[str, str]) -> str:
    for name, value in labels.items():
        template = template.replace("{{" + name + "}}", value)
    return template


SCALES = {"s": (1000, "ms"), "bytes": (1 / 2**30, "GiB"), "percentunit": (100, "%"), "reqps": (1, "req/s")}


def render(url: str, start: float, end: float, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = json.loads(DASHBOARD.read_text())["panels"]
    rows = max(p["gridPos"]["y"] // 8 for p in panels) + 1
    figure, axes = plt.subplots(rows, 2, figsize=(16, 3.2 * rows), squeeze=False)
    for panel in panels:
        ax = axes[panel["gridPos"]["y"] // 8][panel["gridPos"]["x"] // 12]
        scale, unit = SCALES.get(panel["fieldConfig"]["defaults"]["unit"], (1, ""))
        drawn = 0
        for target in panel["targets"]:
            dashed = target["refId"] == "B" and "audit" in target["expr"]
            for series in query_range(url, target["expr"], start, end):
                points = [(float(t) - start, float(v) * scale) for t, v in series["values"] if v not in ("NaN", "+Inf")]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                label = legend(target.get("legendFormat", ""), series["metric"])
                ax.plot(xs, ys, "--" if dashed else "-", linewidth=1.2, label=label)
                drawn += 1
        ax.set_title(panel["title"], fontsize=10, loc="left")
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
        else:
            ax.text(0.5, 0.5, "no data in this run", ha="center", va="center", transform=ax.transAxes, alpha=0.6)
    for row in axes:
        for ax in row:
            ax.set_xlabel("seconds into the run", fontsize=7)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--duration", default="3m")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="milo-dashboard-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        local = stack.enter_context(local_stack(workdir / "stack.log"))
        facade = local.facade.removeprefix("http://")
        url = stack.enter_context(prometheus(prometheus_config(local.metrics, facade), workdir))
        start = time.time()
        locust = argparse.Namespace(
            users=args.users, spawn_rate=2, duration=args.duration, stop_timeout=30, scenario="mixed", token=""
        )
        run_locust(locust, local.facade, workdir)
        time.sleep(3 * SCRAPE_S)  # the last scrapes and rule evaluations
        end = time.time()
        title = (
            f"Milo Voice dashboard (deploy/grafana), real data: local stack on embedded weights, 2-core CPU, "
            f"Locust mixed {args.users} users {args.duration}, {time.strftime('%Y-%m-%d')}"
        )
        render(url, start, end, args.out, title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
