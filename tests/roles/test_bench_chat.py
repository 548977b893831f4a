"""The chat benchmark's own logic: the registry it serves, its questions, its ratios."""

from __future__ import annotations

from pathlib import Path

from loadtests.bench import chat_batching as bench
from loadtests.bench import fixed_lengths
from milo_voice.registry import load_registry


def test_the_benchmark_registry_is_the_chat_entry_with_its_slots_and_fixed_lengths(tmp_path: Path) -> None:
    path = tmp_path / "registry.toml"
    path.write_text(bench.chat_registry(slots=16, n_ctx=2048, batch_tokens=256))
    registry = load_registry(path)
    assert list(registry.models) == ["chat"]
    params = registry["chat"].params
    assert (params["slots"], params["gpu_slots"], params["n_ctx"], params["batch_tokens"]) == (16, 16, 2048, 256)
    assert registry["chat"].implementation == fixed_lengths.CHAT
    assert registry["chat"].batching.max_batch_size == 1  # the committed entry's, unchanged
    assert registry["chat"].weights("embedded").source == load_registry().by_role("chat").weights("embedded").source


def test_every_question_is_new_and_the_prompts_are_kept() -> None:
    questions = [bench.question(n) for n in range(3 * len(bench.PROMPTS))]
    assert len(set(questions)) == len(questions)
    assert all(q.endswith(bench.PROMPTS[n % len(bench.PROMPTS)]) for n, q in enumerate(questions))


def point(system: str, clients: int, tokens_s: float, ttft: float) -> bench.Point:
    return bench.Point(system, clients, 20.0, 10, 0, tokens_s * 20, tokens_s, ttft, ttft, 1000.0, 1000.0)


def test_ratios_compare_batched_with_the_others_level_by_level() -> None:
    points = [
        point("batched", 1, 100.0, 50.0), point("batched", 8, 400.0, 80.0),
        point("serialized", 8, 100.0, 800.0), point("llama-server", 8, 500.0, 40.0),
    ]  # fmt: skip
    rows = {r["clients"]: r for r in bench.ratios(points)}
    assert rows[8] == {
        "clients": 8,
        "batched_vs_serialized_tokens_s": 4.0,
        "batched_vs_llama_server_tokens_s": 0.8,
        "batched_vs_llama_server_ttft_p50": 2.0,
        "batched_vs_its_single_client_tokens_s": 4.0,
    }
    assert "batched_vs_serialized_tokens_s" not in rows[1]
    table = bench.table(points)
    assert table.index("| serialized | 8 ") < table.index("| batched | 1 ") < table.index("| llama-server | 8 ")
