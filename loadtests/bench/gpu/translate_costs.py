"""Where a step of the torch translation engine goes, on the GPU: the decoder's step alone (one CUDA
graph) by rows, attending to the positions a sentence of the benchmark's length has written against
every position of the cache; a whole search step by sentences searched together; the search's
choice of candidates from each row's best logits against log-probabilities over the vocabulary; and
admitting sentences as a graph against the same work launched kernel by kernel (the host's time to
launch it, too); a step's attention as two products against torch's fused kernel, and each row's
best logits in two passes against one: alone, as the engine timed them at load to choose
(``milo_voice/roles/nllb/tuning.py``), and as whole search steps of every pair; and the GPU's time
in a search step of every sentence, by operation (the step run op by op, decoder included, under
torch's profiler), with the ways chosen at load.

``python -m loadtests.bench.gpu.translate_costs MODEL_DIR [WORK]`` (``gpu_device.sh run``): the
benchmark's shape (float16, beam 2, ``TRANSLATE_TOKENS`` a sentence), results in
``WORK/results/translate-costs.json``.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from loadtests.bench.fixed_lengths.translate import FixedLengthTranslator
from loadtests.bench.gpu.common import TRANSLATE_TOKENS, save
from milo_voice.roles.nllb.kernels import STEP_ATTENTIONS, TOPS, ChosenKernels
from milo_voice.roles.nllb.model import NllbModel
from milo_voice.roles.nllb.search import BeamSearch, row_top

SENTENCES = 128  # 64 clients' two-sentence texts
SOURCE_TOKENS = 18
REGISTRY_MAX_LENGTH = 256  # the registry's max_decoding_length: the key/value cache a served model holds
PROFILED_STEPS = 10
OPERATIONS_KEPT = 25


def synced_ms(function: Callable[[], Any], repeats: int = 50) -> float:
    """Mean milliseconds of ``function`` with the GPU's work included (one warm-up call)."""
    function()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1000


def search_step_ms(search: BeamSearch, sources: list[list[int]], prefix: list[int]) -> float:
    """Milliseconds a step of ``sources`` searched together by ``search``, from admission to the last step."""
    for _ in range(3):  # the first two capture what the shape needs
        for source in sources:
            search.add(source, prefix)
        torch.cuda.synchronize()
        started, steps = time.perf_counter(), 0
        while search.busy:
            search.step()
            steps += 1
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps * 1000


def step_by_operation(
    model_dir: Path, options: Any, sources: list[list[int]], prefix: list[int], chosen: ChosenKernels
) -> dict[str, Any]:
    """The GPU's milliseconds a search step of ``sources``, by operation (the ``OPERATIONS_KEPT``
    longest, the rest summed), over ``PROFILED_STEPS`` steps after the admission, every kernel
    launched on its own (no graph) so that the profiler names each; the ``chosen`` ways."""
    from torch.profiler import ProfilerActivity, profile

    model = NllbModel.from_model_dir(model_dir, "cuda", torch.float16, REGISTRY_MAX_LENGTH, cuda_graphs=False)
    model.step_attention = chosen.attention
    search = BeamSearch(model, options, len(sources), top_passes=chosen.top_passes)
    for source in sources:
        search.add(source, prefix)
    search.step()  # the admission, and the first step
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiled:
        for _ in range(PROFILED_STEPS):
            search.step()
        torch.cuda.synchronize()
    by_operation: dict[str, float] = {}
    for event in profiled.key_averages():
        microseconds = getattr(event, "self_device_time_total", 0) or 0
        if microseconds:
            by_operation[event.key] = by_operation.get(event.key, 0.0) + microseconds / 1000 / PROFILED_STEPS
    ranked = sorted(by_operation.items(), key=lambda item: -item[1])
    kept = {name: round(ms, 4) for name, ms in ranked[:OPERATIONS_KEPT]}
    return {
        "sentences": len(sources),
        "steps": PROFILED_STEPS,
        "gpu_ms_a_step": round(sum(by_operation.values()), 3),
        "by_operation_ms": kept,
        "others_ms": round(sum(ms for _name, ms in ranked[OPERATIONS_KEPT:]), 4),
    }


def vocabulary_candidates(
    logits: torch.Tensor, scores: torch.Tensor, groups: int, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The search's candidates as it chose them before it read each row's best logits:
    log-probabilities over the whole vocabulary in float32, the best over each sentence's beams."""
    log_probs = torch.log_softmax(logits.float(), dim=-1) + scores[:, None]
    return log_probs.view(groups, -1).topk(count, dim=-1)


def translate_costs(model_dir: Path) -> dict[str, Any]:
    translator = FixedLengthTranslator(
        model_dir, device="cuda", compute_type="float16", max_decoding_length=TRANSLATE_TOKENS, engine="torch",
        search_sentences=SENTENCES,
    )  # fmt: skip
    engine = translator._torch
    assert engine is not None
    model = engine.model
    options = engine.options(2, TRANSLATE_TOKENS, TRANSLATE_TOKENS)
    generator = torch.Generator().manual_seed(0)
    sources = [
        [*torch.randint(10, 1000, (SOURCE_TOKENS,), generator=generator).tolist(), engine.end_id]
        for _ in range(SENTENCES)
    ]
    prefix = [engine.start_id + 5]
    tokens = torch.zeros(2 * SENTENCES, dtype=torch.long, device="cuda")
    positions = torch.full_like(tokens, TRANSLATE_TOKENS - 1)  # a sentence's last step
    results: dict[str, Any] = {
        "decoder_step_ms": {}, "search_step_ms": {}, "search_step_graph_ms": {}, "candidates_ms": {}, "admission": {},
    }  # fmt: skip
    # The benchmark's sentences decode TRANSLATE_TOKENS tokens, so its model holds a cache that long:
    # the decoder's step by span on a model with the registry's.
    served = NllbModel.from_model_dir(model_dir, "cuda", torch.float16, REGISTRY_MAX_LENGTH)
    served.warm_up(SENTENCES, 2, source_lengths=(SOURCE_TOKENS + 1,))
    for rows in (2, SENTENCES, 2 * SENTENCES):
        row = {}
        for name, span in (("written", TRANSLATE_TOKENS), ("whole_cache", served.max_length)):
            step = lambda r=rows, s=span: served.step(tokens[:r], positions[:r], SOURCE_TOKENS + 1, s)  # noqa: E731
            row[f"{name}_ms"] = round(synced_ms(step), 3)
        results["decoder_step_ms"][rows] = row
    # The step's attention as two products, beside torch's fused kernel that the model above runs.
    served.step_attention = "products"  # its graphs captured again as they run now
    step = lambda: served.step(tokens, positions, SOURCE_TOKENS + 1, TRANSLATE_TOKENS)  # noqa: E731
    results["decoder_step_ms"][2 * SENTENCES]["written_products_attention_ms"] = round(synced_ms(step), 3)
    results["chosen_at_load"] = asdict(engine.chosen)
    top_passes = engine.chosen.top_passes
    search = BeamSearch(model, options, SENTENCES, top_passes=top_passes)
    logits = model.step(tokens, positions, SOURCE_TOKENS + 1, TRANSLATE_TOKENS).clone()
    scores = torch.zeros(len(tokens), device="cuda")
    ways = {
        "best_logits": lambda: search._candidates(logits, SENTENCES, 4),
        "vocabulary_log_probs": lambda: vocabulary_candidates(logits, scores, SENTENCES, 4),
        "row_top_two_passes": lambda: row_top(logits, 4),
        "row_top_one_pass": lambda: logits.topk(4, dim=-1),
    }
    results["candidates_ms"] = {name: round(synced_ms(way), 3) for name, way in ways.items()}
    # The search's rules op by op around the decoder's graph, against the whole step as one graph.
    op_by_op = BeamSearch(model, options, SENTENCES, top_passes=top_passes)
    recorded = BeamSearch(model, options, SENTENCES, graphs=True, top_passes=top_passes)
    recorded.warm_up()
    for count in (1, SENTENCES // 2, SENTENCES):
        results["search_step_ms"][count] = round(search_step_ms(op_by_op, sources[:count], prefix), 3)
        results["search_step_graph_ms"][count] = round(search_step_ms(recorded, sources[:count], prefix), 3)
    for count in (2, 8):
        first_rows = [2 * i for i in range(count)]
        ids, present = model._sources(sources[:count], count, 32)
        rows = (torch.tensor(first_rows)[:, None] + torch.arange(2)).view(-1)
        inputs = (ids.cuda(), present.cuda(), rows.cuda())
        as_graph = lambda c=count, f=first_rows: model.admit(sources[:c], f, 2)  # noqa: E731
        eager = lambda i=inputs: model._admit(*i, 2)  # noqa: E731
        row = {"graph_ms": round(synced_ms(as_graph), 3), "eager_ms": round(synced_ms(eager), 3)}
        for name, function in (("graph_launch_ms", as_graph), ("eager_launch_ms", eager)):
            torch.cuda.synchronize()
            started = time.perf_counter()
            function()
            row[name] = round((time.perf_counter() - started) * 1000, 3)  # the host's time, the GPU's after
            torch.cuda.synchronize()
        results["admission"][count] = row
    # Whole search steps of every sentence as graphs, for every pair of ways.
    chosen_attention = model.step_attention
    results["search_step_graph_by_ways_ms"] = {}
    for attention, top in itertools.product(STEP_ATTENTIONS, TOPS):
        model.step_attention = attention
        by_ways = BeamSearch(model, options, SENTENCES, graphs=True, top_passes=TOPS[top])
        by_ways.warm_up()
        results["search_step_graph_by_ways_ms"][f"{attention}+{top}"] = round(
            search_step_ms(by_ways, sources, prefix), 3
        )
    model.step_attention = chosen_attention
    results["step_by_operation"] = step_by_operation(model_dir, options, sources, prefix, engine.chosen)
    print(results, flush=True)
    return results


if __name__ == "__main__":
    work = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/milo-gpu")
    save(work, "translate-costs", translate_costs(Path(sys.argv[1])))
