"""``milo_translate_step_kernels_info``: the ways a translation model's steps run, as each host
sets it, and as the benchmark reads it back from a metrics page."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, generate_latest

from loadtests.bench import triton_counters
from milo_voice.roles.nllb.kernels import ChosenKernels
from milo_voice.serving import kernels_metrics
from milo_voice.serving.kernels_metrics import NAME, TritonKernelsMetric


def test_the_pytriton_host_sets_one_series_an_instance_s_choice() -> None:
    kernels_metrics.publish("translate-a", ChosenKernels("products", "one_pass", {"attention_fused": 2.9}))
    kernels_metrics.publish("translate-b", None)  # no torch engine: nothing
    page = generate_latest(REGISTRY).decode()
    assert REGISTRY.get_sample_value(NAME, {"model": "translate-a", "attention": "products", "top": "one_pass"}) == 1
    assert 'model="translate-b"' not in page
    # What the benchmark reads back from the page.
    assert triton_counters.parse_step_kernels(page)["translate-a"] == [{"attention": "products", "top": "one_pass"}]


def test_the_stock_server_sets_it_through_triton_s_metrics_api() -> None:
    made: list[tuple[dict[str, str], float]] = []

    class Family:
        GAUGE = "gauge"

        def __init__(self, name: str, description: str, kind: str) -> None:
            assert (name, kind) == (NAME, "gauge")

        def Metric(self, labels: dict[str, str]) -> Any:
            class Metric:
                def set(self, value: float) -> None:
                    made.append((labels, value))

            return Metric()

    pb_utils = type("pb_utils", (), {"MetricFamily": Family})
    kept = [TritonKernelsMetric(pb_utils, "translate", ChosenKernels("fused", "two_passes"))]
    assert made == [({"model": "translate", "attention": "fused", "top": "two_passes"}, 1)]
    kept.append(TritonKernelsMetric(pb_utils, "translate", None))
    assert len(made) == 1


def test_the_benchmark_reads_triton_s_page_with_its_labels_in_any_order() -> None:
    page = "\n".join(
        [
            "# TYPE milo_translate_step_kernels_info gauge",
            'milo_translate_step_kernels_info{attention="products",model="translate",top="one_pass"} 1',
            'milo_translate_step_kernels_info{attention="fused",model="translate",top="one_pass"} 1',
            'milo_translate_step_kernels_info{attention="fused",model="old",top="one_pass"} 0',
        ]
    )
    assert triton_counters.parse_step_kernels(page) == {
        "translate": [{"attention": "products", "top": "one_pass"}, {"attention": "fused", "top": "one_pass"}]
    }
