"""Triton's per-model counters, read from its Prometheus text before and after a stretch of load,
and what that stretch did per model: requests, executions (batches), how many requests a batch
held, and where a request's time went (waiting in the queue, or in the batch it ran in); for a
model with step-level batching, its search's steps, sentences a step and time a step; for a
batched model, what its own process and the role in it spent on a batch.

Triton adds the compute time of a batch to every request in it, so ``compute_ms`` is the time
of the batch a request rode in, not a share of it. Decoupled models (the streaming ones) count
the time to their last response.

Triton's statistics API (``/v2/models/stats``) also keeps, per batch size, how many executions
ran at that size and their compute time: ``by_batch`` gives a stretch's, so that an execution of
the served stack can be set against the same batch computed in process.
"""

from __future__ import annotations

import json
import re
import urllib.request

COUNTERS = {
    "nv_inference_request_success": "requests",
    "nv_inference_exec_count": "executions",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_infer_duration_us": "compute_us",
    "nv_inference_request_duration_us": "request_us",
    # Step-level batching's search (milo_voice/serving/search_metrics.py), where a model has one.
    "milo_translate_search_steps_total": "search_steps",
    "milo_translate_search_sentences_total": "search_sentences",
    "milo_translate_search_step_seconds_total": "search_seconds",
    # A batched model's own timing of its batches (milo_voice/serving/batch_metrics.py).
    "milo_batch_executions_total": "batch_executions",
    "milo_batch_seconds_total": "batch_seconds",
    "milo_batch_role_seconds_total": "role_seconds",
}

Counters = dict[str, dict[str, float]]  # model -> counter -> value


def parse(text: str) -> Counters:
    """The counters of each model, summed over its versions."""
    counters: Counters = {}
    for metric, key in COUNTERS.items():
        for model, value in re.findall(rf'^{metric}{{model="([^"]+)"[^}}]*}} ([0-9.e+-]+)$', text, re.M):
            row = counters.setdefault(model, {})
            row[key] = row.get(key, 0.0) + float(value)
    return counters


def read(metrics_url: str) -> Counters:
    return parse(page(metrics_url))


def page(metrics_url: str) -> str:
    """The metrics page as text, for the parsers here."""
    return str(urllib.request.urlopen(metrics_url, timeout=5).read().decode())


def parse_step_kernels(text: str) -> dict[str, list[dict[str, str]]]:
    """Per translation model, the ways each of its instances' search steps run, as chosen at load
    (``milo_translate_step_kernels_info``: milo_voice/serving/kernels_metrics.py)."""
    kernels: dict[str, list[dict[str, str]]] = {}
    for labels in re.findall(r"^milo_translate_step_kernels_info\{([^}]*)\} 1(?:\.0)?$", text, re.M):
        row = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        model = row.pop("model", "")
        kernels.setdefault(model, []).append(row)
    return kernels


def mean_batch(counters: dict[str, float]) -> float | None:
    executions = counters.get("executions", 0.0)
    return round(counters.get("requests", 0.0) / executions, 2) if executions else None


def stretch(before: Counters, after: Counters) -> dict[str, dict[str, float | None]]:
    """Per model that served a request between the two readings: its requests and executions,
    the mean batch, and the mean queue, compute and whole-request times of a request in ms."""
    out: dict[str, dict[str, float | None]] = {}
    for model, now in sorted(after.items()):
        then = before.get(model, {})
        delta = {key: now.get(key, 0.0) - then.get(key, 0.0) for key in COUNTERS.values()}
        requests = delta["requests"]
        if requests <= 0:
            continue
        out[model] = {
            "requests": requests,
            "executions": delta["executions"],
            "mean_batch": mean_batch(delta),
            "queue_ms": round(delta["queue_us"] / requests / 1000, 1),
            "compute_ms": round(delta["compute_us"] / requests / 1000, 1),
            "request_ms": round(delta["request_us"] / requests / 1000, 1),
        }
        if (batches := delta["batch_executions"]) > 0:
            # Per batch, unlike compute_ms: what the model's process and its role spent on one.
            out[model]["batch_executions"] = batches
            out[model]["batch_ms"] = round(delta["batch_seconds"] / batches * 1000, 2)
            out[model]["role_ms"] = round(delta["role_seconds"] / batches * 1000, 2)
        if (steps := delta["search_steps"]) > 0:
            out[model]["search_steps"] = steps
            out[model]["sentences_per_step"] = round(delta["search_sentences"] / steps, 1)
            out[model]["step_ms"] = round(delta["search_seconds"] / steps * 1000, 2)
    return out


BatchStats = dict[str, dict[int, tuple[int, int]]]  # model -> batch size -> (executions, compute ns)


def read_batch_stats(http: str) -> BatchStats:
    """Per model and batch size, the executions so far and their compute time (``http``: Triton's
    HTTP host:port). The stock server opens the API without a key; PyTriton guards it with one."""
    body = json.loads(urllib.request.urlopen(f"http://{http}/v2/models/stats", timeout=5).read())
    stats: BatchStats = {}
    for model in body.get("model_stats", []):
        sizes = stats.setdefault(model["name"], {})
        for row in model.get("batch_stats", []):
            infer = row["compute_infer"]
            count, ns = sizes.get(int(row["batch_size"]), (0, 0))
            sizes[int(row["batch_size"])] = (count + int(infer["count"]), ns + int(infer["ns"]))
    return stats


def by_batch(before: BatchStats, after: BatchStats) -> dict[str, dict[int, dict[str, float]]]:
    """Per model, per batch size executed between the two readings: the executions and their mean
    compute time in ms."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for model, sizes in sorted(after.items()):
        for size, (count, ns) in sorted(sizes.items()):
            then_count, then_ns = before.get(model, {}).get(size, (0, 0))
            if count > then_count:
                executions = count - then_count
                out.setdefault(model, {})[size] = {
                    "executions": executions,
                    "ms": round((ns - then_ns) / executions / 1e6, 2),
                }
    return out
