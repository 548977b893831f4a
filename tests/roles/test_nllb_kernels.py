"""How translation's search steps attend and take each row's best logits: the option, and the
choice at load (timed where asked, on the embedded model)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from milo_voice.roles.nllb import model as model_module
from milo_voice.roles.nllb import tuning
from milo_voice.roles.nllb.kernels import ChosenKernels, StepKernels
from milo_voice.roles.nllb.model import NllbModel
from milo_voice.roles.nllb.tuning import choose, fastest
from milo_voice.roles.translate import Translator


def test_the_option_names_a_way_or_auto() -> None:
    assert StepKernels.from_params({}) == StepKernels("auto", "auto")
    chosen = StepKernels.from_params({"gpu_step_attention": "products", "gpu_step_top": "two_passes"})
    assert chosen == StepKernels("products", "two_passes")
    with pytest.raises(ValueError, match="step attention 'flash'"):
        StepKernels("flash")
    with pytest.raises(ValueError, match="step top '3'"):
        StepKernels.from_params({"gpu_step_top": 3})


def test_the_fastest_way_is_kept_with_each_way_s_time() -> None:
    calls = {"slow": 0, "fast": 0}

    def slow() -> None:
        calls["slow"] += 1
        time.sleep(0.002)

    def fast() -> None:
        calls["fast"] += 1

    name, times = fastest({"slow": slow, "fast": fast}, torch.device("cpu"))
    assert name == "fast"
    assert times["slow"] >= 2.0 > times["fast"]
    assert calls["slow"] == calls["fast"] > 1


def test_a_neighbour_slowing_most_rounds_of_the_faster_way_does_not_make_it_lose() -> None:
    """What the stock server's side-by-side loads do to the timing: another model's warm-up on the
    same GPU slows whatever runs meanwhile, here two thirds of the faster way's rounds."""
    disturbed_calls = (tuning.ROUNDS * (tuning.CALLS + 1)) * 2 // 3
    calls = {"fast": 0}

    def slow() -> None:
        time.sleep(0.002)

    def fast() -> None:
        calls["fast"] += 1
        if calls["fast"] <= disturbed_calls:
            time.sleep(0.006)  # the neighbour's kernels run first

    name, times = fastest({"slow": slow, "fast": fast}, torch.device("cpu"))
    assert name == "fast", times
    assert times["fast"] < 2.0 <= times["slow"]


@pytest.fixture(scope="module")
def model(embedded_dir: Path) -> NllbModel:
    return NllbModel.from_model_dir(embedded_dir / "translate")


def test_auto_off_a_gpu_is_the_fused_kernel_and_one_pass_untimed(model: NllbModel) -> None:
    chosen = choose(model, StepKernels(), rows=4, candidates=4)
    assert chosen == ChosenKernels("fused", "one_pass", {})
    assert model.step_attention == "fused"


def test_ways_named_are_set_untimed(model: NllbModel) -> None:
    chosen = choose(model, StepKernels("products", "two_passes"), rows=4, candidates=4, timed_here=True)
    assert chosen == ChosenKernels("products", "two_passes", {})
    assert (model.step_attention, chosen.top_passes) == ("products", 2)
    model.step_attention = "fused"


def test_auto_times_each_way_on_the_model_and_sets_the_faster(model: NllbModel) -> None:
    chosen = choose(model, StepKernels(), rows=4, candidates=4, timed_here=True)
    assert set(chosen.timed_ms) == {"attention_fused", "attention_products", "top_one_pass", "top_two_passes"}
    assert all(ms > 0 for ms in chosen.timed_ms.values())
    attention_ms = {way: chosen.timed_ms[f"attention_{way}"] for way in ("fused", "products")}
    top_ms = {way: chosen.timed_ms[f"top_{way}"] for way in ("one_pass", "two_passes")}
    assert chosen.attention == min(attention_ms, key=attention_ms.__getitem__) == model.step_attention
    assert chosen.top == min(top_ms, key=top_ms.__getitem__)
    model.step_attention = "fused"


def test_timing_captures_each_way_s_step_once(model: NllbModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ways alternate round after round: the model keeps each way's step graph, captured once."""
    captured: list[str] = []

    def record(device: torch.device, run: Callable[[], object], pool: object = None) -> tuple[object, object]:
        captured.append(model.step_attention)
        return SimpleNamespace(replay=run), run()

    monkeypatch.setattr(model_module, "capture", record)
    monkeypatch.setattr(model, "cuda_graphs", True)  # as on a GPU, the graphs replayed on the CPU
    monkeypatch.setattr(model, "_graphs", {})
    chosen = choose(model, StepKernels(top="one_pass"), rows=4, candidates=4, timed_here=True)
    assert sorted(captured) == ["fused", "products"]
    assert {key[-1] for key in model._graphs} == {"fused", "products"}
    assert chosen.attention == model.step_attention
    model.step_attention = "fused"


def test_changing_the_attention_makes_recorded_graphs_stale(model: NllbModel) -> None:
    before = model.graphs_generation
    model.step_attention = "fused"  # as it is: nothing changes
    assert model.graphs_generation == before
    model.step_attention = "products"
    assert model.graphs_generation == before + 1
    model.step_attention = "fused"
    with pytest.raises(ValueError, match="step attention 'flash'"):
        model.step_attention = "flash"


def test_the_role_says_what_its_torch_engine_chose(embedded_dir: Path) -> None:
    """What a host publishes (``milo_voice/serving/kernels_metrics.py``): the torch engine's ways,
    none for CTranslate2 alone."""
    folder = embedded_dir / "translate"
    named = Translator(folder, compute_type="float32", engine="torch", kernels=StepKernels("products", "two_passes"))
    assert named.step_kernels == ChosenKernels("products", "two_passes", {})
    assert Translator(folder, compute_type="float32", engine="torch").step_kernels == ChosenKernels("fused", "one_pass")
    assert Translator(folder, compute_type="int8", engine="ctranslate2").step_kernels is None
