"""The torch NLLB engine against CTranslate2 on the embedded model, both in float32 on the CPU:
the same hypotheses and the same scores, beam after beam, with padding, forced lengths and cuts."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.records import InputError, TranslateRequest, Translation
from loadtests.bench.fixed_lengths.translate import FixedLengthTranslator
from milo_voice.roles.attention_heads import attend_one_position
from milo_voice.roles.ctranslate2_files import ModelFileError, read_model_bin
from milo_voice.roles.nllb import model as model_module
from milo_voice.roles.nllb import search as search_module
from milo_voice.roles.nllb.kernels import StepKernels
from milo_voice.roles.nllb.model import NllbModel
from milo_voice.roles.nllb.search import TOP_CHUNK, BeamSearch, Hypothesis, row_top
from milo_voice.roles.translate import Translator

REQUESTS = [
    TranslateRequest("Manao ahoana daholo ianareo.", "mg", "fr"),
    TranslateRequest("Bonjour à tous.", "fr", "mg"),
    TranslateRequest("Misaotra betsaka tompoko.", "mg", "en"),
    TranslateRequest("Où se trouve l'hôpital le plus proche? Nous avons besoin d'eau et de nourriture.", "fr", "mg"),
    TranslateRequest("Veloma ary mandra-pihaona. Mila rano sy sakafo izahay.", "mg", "fr"),
    TranslateRequest("rano", "mg", "fr"),
]


def _pair(folder: Path, cls: type[Translator] = Translator, **options: object) -> tuple[Translator, Translator]:
    made = [cls(folder, compute_type="float32", engine=engine, **options) for engine in ("ctranslate2", "torch")]  # type: ignore[arg-type]
    return made[0], made[1]


def _assert_same(expected: list[Translation | InputError], got: list[Translation | InputError]) -> None:
    for want, have in zip(expected, got, strict=True):
        if isinstance(want, InputError):
            assert type(have) is type(want) and str(have) == str(want)
            continue
        assert isinstance(have, Translation)
        assert have.text == want.text
        assert have.score == pytest.approx(want.score, abs=1e-4)


@pytest.mark.parametrize("beam_size", [2, 3, 4])
def test_a_batch_of_every_length_decodes_as_ctranslate2_does(embedded_dir: Path, beam_size: int) -> None:
    reference, torch_engine = _pair(embedded_dir / "translate", beam_size=beam_size)
    assert torch_engine.engine == "torch"
    expected = reference.translate_batch(REQUESTS)
    assert all(isinstance(r, Translation) and r.text for r in expected)
    _assert_same(expected, torch_engine.translate_batch(REQUESTS))
    # One at a time (no padding, a batch of one) decodes the same as in the batch.
    _assert_same(expected, [torch_engine.translate_batch([r])[0] for r in REQUESTS])


def test_a_batch_admitted_padded_decodes_alike(embedded_dir: Path) -> None:
    """Seven sentences admitted as eight, as a CUDA graph pads them: the same answers."""
    reference, torch_engine = _pair(embedded_dir / "translate")
    torch_engine._torch.model.pad_admissions = True
    _assert_same(reference.translate_batch(REQUESTS[:5]), torch_engine.translate_batch(REQUESTS[:5]))


def test_a_batch_past_the_most_sentences_is_searched_in_chunks_alike(embedded_dir: Path) -> None:
    reference, torch_engine = _pair(embedded_dir / "translate")
    torch_engine._torch.max_sentences = 3  # the requests hold 8 sentences: chunks of 3, 3 and 2
    _assert_same(reference.translate_batch(REQUESTS), torch_engine.translate_batch(REQUESTS))


def test_both_engines_loaded_take_a_batch_by_its_sentences(embedded_dir: Path) -> None:
    """What "auto" loads on a GPU: the torch engine for what it searches at once, CTranslate2 for
    more (instead of the torch engine's chunks); either way the answers are CTranslate2's."""
    reference = Translator(embedded_dir / "translate", compute_type="float32", engine="ctranslate2")
    both = Translator(embedded_dir / "translate", compute_type="float32", engine="torch+ctranslate2")
    both._torch.max_sentences = 3
    assert both.engine_for(3) is both._torch and both.engine_for(4) is both._ctranslate2
    assert reference.engine_for(3) is reference._ctranslate2  # one engine: whatever the batch
    small, large = REQUESTS[:2], REQUESTS  # 2 sentences, then 8
    _assert_same(reference.translate_batch(small), both.translate_batch(small))
    _assert_same(reference.translate_batch(large), both.translate_batch(large))


def test_forced_lengths_and_the_output_limit_as_ctranslate2(embedded_dir: Path) -> None:
    # The benchmark's fixed lengths forbid the end token until the limit (min_decoding_length); 40
    # steps attend to spans of 16, 32 and 64 positions.
    reference, torch_engine = _pair(embedded_dir / "translate", FixedLengthTranslator, max_decoding_length=40)
    _assert_same(reference.translate_batch(REQUESTS[:3]), torch_engine.translate_batch(REQUESTS[:3]))
    # A limit the translation reaches without ending is refused, by both in the same words.
    reference, torch_engine = _pair(embedded_dir / "translate", max_decoding_length=3)
    expected = reference.translate_batch(REQUESTS)
    assert any(isinstance(r, InputError) for r in expected)
    _assert_same(expected, torch_engine.translate_batch(REQUESTS))


def test_the_torch_engine_needs_a_beam(embedded_dir: Path) -> None:
    with pytest.raises(ValueError, match="beam_size 2 or more"):
        Translator(embedded_dir / "translate", engine="torch", beam_size=1)
    # On a CPU, "auto" keeps CTranslate2.
    assert Translator(embedded_dir / "translate").engine == "ctranslate2"


def test_the_model_reads_every_layer_of_the_file(embedded_dir: Path) -> None:
    weights = read_model_bin(embedded_dir / "translate" / "model.bin", expected_spec="TransformerSpec")
    model = NllbModel(weights)

    def layers(side: str) -> int:
        return len({m.group(1) for name in weights if (m := re.match(side + r"/layer_(\d+)/", name))})

    assert model.decoder_layers == layers("decoder") > 0
    assert model.encoder_layers == layers("encoder") > 0
    assert model.vocabulary_size == weights["decoder/embeddings/weight"].shape[0]
    # Another transformer's layout is refused, not computed wrongly.
    post_norm = {**weights, "decoder/pre_norm": np.array(0, dtype=np.int8)}
    with pytest.raises(ModelFileError, match="decoder/pre_norm"):
        NllbModel(post_norm)


def test_a_step_attends_to_the_positions_written_as_to_the_whole_cache(embedded_dir: Path) -> None:
    """A step over the span its rows have written gives the logits of a step over every position,
    rows at different positions, and a row past the span (one no sentence holds) disturbs none."""
    spanned, whole = (NllbModel.from_model_dir(embedded_dir / "translate") for _ in range(2))
    for model in (spanned, whole):
        model.admit([[5, 6, 7, 2], [8, 9, 2], [10, 2]], [0, 1, 2], 1)
    generator = torch.Generator().manual_seed(0)
    for step in range(40):
        tokens = torch.randint(4, spanned.vocabulary_size, (3,), generator=generator)
        positions = torch.tensor([step, max(step - 7, 0), spanned.max_length - 1])  # the third: stale
        got = spanned.step(tokens, positions, 4, span=step + 1)
        want = whole.step(tokens, positions, 4, span=whole.max_length)
        torch.testing.assert_close(got[:2], want[:2])


class _PaddedRows(NllbModel):
    """Rows padded to a power of two, as with CUDA graphs on a GPU: the padding rows compute too."""

    def slots(self, rows: int) -> int:
        return 1 << (rows - 1).bit_length()


def test_rows_padded_as_on_a_gpu_decode_the_same(embedded_dir: Path) -> None:
    reference, torch_engine = _pair(embedded_dir / "translate", beam_size=3)  # 3 beams: never a power of two
    torch_engine._torch.model = _PaddedRows.from_model_dir(embedded_dir / "translate", max_length=256)
    _assert_same(reference.translate_batch(REQUESTS), torch_engine.translate_batch(REQUESTS))


@pytest.mark.parametrize("padded", [False, True])
def test_requests_joining_a_running_search_decode_as_alone(embedded_dir: Path, padded: bool) -> None:
    """Step-level batching: requests submitted while others decode, in whatever order and at
    whatever step, get CTranslate2's answers, each as soon as its own sentences are done; also
    padded as CUDA graphs pad them: 3 sentences admitted as 4, the fourth in the spare row, and each
    step over 4 slots of sentences, sources and positions rounded up (what a recorded step runs)."""
    reference, torch_engine = _pair(embedded_dir / "translate", beam_size=3)
    expected = reference.translate_batch(REQUESTS)
    torch_engine._torch.max_sentences = 3  # fewer rows than sentences: the others wait their turn
    torch_engine._torch.model.pad_admissions = padded
    stepwise = torch_engine.stepwise()
    if padded:
        stepwise._search = BeamSearch(torch_engine._torch.model, stepwise._search.options, 3, pad_groups=True)
    got: dict[int, Translation | InputError] = {}
    answered_while_others_decode = set()
    for key, request in enumerate(REQUESTS):
        assert stepwise.submit(key, request) is None
        for steps in (2, 1):
            done = stepwise.advance(steps)
            got.update(done)
            if stepwise.busy:
                answered_while_others_decode.update(done)
    while stepwise.busy:
        got.update(stepwise.advance(4))
    _assert_same(expected, [got[key] for key in range(len(REQUESTS))])
    # Some were answered while requests submitted after them were still decoding.
    assert answered_while_others_decode


def test_a_search_recorded_as_graphs_needs_a_model_that_runs_them(embedded_dir: Path) -> None:
    """On a CPU the engine's searches run op by op whatever ``search_graphs`` asks, and a search
    asked to record its steps on a model without CUDA graphs is refused, not run half-recorded."""
    torch_engine = Translator(embedded_dir / "translate", compute_type="float32", engine="torch", search_graphs=True)
    search = torch_engine.stepwise()._search
    assert not search.graphs and not search.pad_groups
    with pytest.raises(ValueError, match="CUDA graphs"):
        BeamSearch(torch_engine._torch.model, search.options, 4, graphs=True)


def test_a_stepwise_request_refused_waiting_or_cancelled(embedded_dir: Path) -> None:
    _reference, torch_engine = _pair(embedded_dir / "translate")
    torch_engine._torch.max_sentences = 2
    stepwise = torch_engine.stepwise()
    refusal = stepwise.submit("bad", TranslateRequest("Bonjour", "fr", "fr"))
    assert isinstance(refusal, InputError) and "bad" not in stepwise
    assert stepwise.submit("long", REQUESTS[3]) is None  # 2 sentences
    assert "long" not in stepwise.waiting()  # the next step admits it: the rows are free
    stepwise.advance(1)
    assert stepwise.submit("next", REQUESTS[4]) is None  # 2 sentences: no row is free
    assert "next" in stepwise.waiting()
    stepwise.advance(1)
    assert "next" in stepwise.waiting()
    stepwise.cancel("long")  # its rows free at once: "next" takes them at the next step
    assert "long" not in stepwise
    stepwise.advance(1)
    assert "next" not in stepwise.waiting()
    answers: dict[object, Translation | InputError] = {}
    while stepwise.busy:
        answers.update(stepwise.advance(8))
    expected = Translator(embedded_dir / "translate", compute_type="float32").translate_batch([REQUESTS[4]])
    _assert_same(expected, [answers["next"]])
    assert set(answers) == {"next"}


def _steps_alone(torch_engine: Translator, request: TranslateRequest) -> int:
    """The steps a search of ``request`` alone takes."""
    alone = torch_engine.stepwise()
    alone.submit("alone", request)
    steps = 0
    while alone.busy:
        alone.advance(1)
        steps += 1
    return steps


def test_a_request_cancelled_while_its_last_step_decodes_is_not_answered(embedded_dir: Path) -> None:
    """A step is launched, then collected: a request cancelled between the two, in the step that
    ends it, is not answered; the others are, as alone. A step may be launched behind it before it
    is collected, not a third."""
    reference, torch_engine = _pair(embedded_dir / "translate")
    short, other = REQUESTS[5], REQUESTS[0]
    steps = _steps_alone(torch_engine, short)
    stepwise = torch_engine.stepwise()
    stepwise.submit("short", short)
    stepwise.submit("other", other)
    answers = stepwise.advance(steps - 1)
    stepwise.launch()  # the short request's last step
    stepwise.launch()  # and the step behind it
    assert stepwise.in_flight == stepwise.max_in_flight == 2
    with pytest.raises(RuntimeError, match="not collected"):
        stepwise.launch()
    stepwise.cancel("short")
    answers.update(stepwise.collect())
    answers.update(stepwise.collect())
    while stepwise.busy:
        answers.update(stepwise.advance(4))
    assert set(answers) == {"other"}
    _assert_same(reference.translate_batch([other]), [answers["other"]])


def test_steps_launched_before_the_last_is_collected_decode_as_alone(embedded_dir: Path) -> None:
    """As the served role's thread runs the search: a step always queued behind the one being
    collected, requests admitted while both decode, rows fewer than sentences. A sentence the older
    step finishes decodes nothing in the step behind it, and each request gets CTranslate2's answer."""
    reference, torch_engine = _pair(embedded_dir / "translate", beam_size=3)
    expected = reference.translate_batch(REQUESTS)
    torch_engine._torch.max_sentences = 3  # the requests hold 8 sentences: the others wait for rows
    stepwise = torch_engine.stepwise()
    got: dict[int, Translation | InputError] = {}
    pending = list(enumerate(REQUESTS))
    decoded = []
    while pending or stepwise.busy:
        stepwise.launch_ahead()
        if pending:  # one joins while two steps are queued: it takes the rows free now
            stepwise.submit(*pending.pop(0))
            stepwise.admit()
        got.update(stepwise.collect())
        decoded.append(stepwise.last_step_sentences)
    _assert_same(expected, [got[key] for key in range(len(REQUESTS))])
    # Every step held at most the rows' sentences, and the one queued past the last answer none.
    assert max(decoded) == 3 and decoded[-1] == 0


def test_rows_freed_by_a_cancel_and_taken_again_before_the_step_is_collected(embedded_dir: Path) -> None:
    """One row of sentences: a request cancelled in its last step, launched, and another admitted to
    the row it freed, in the step queued behind: the step collected first ends the cancelled
    sentence, and its hypothesis is not the new request's answer; that one decodes as alone."""
    reference, torch_engine = _pair(embedded_dir / "translate")
    torch_engine._torch.max_sentences = 1
    short, other = REQUESTS[5], REQUESTS[0]
    steps = _steps_alone(torch_engine, short)
    stepwise = torch_engine.stepwise()
    stepwise.submit("short", short)
    answers = stepwise.advance(steps - 1)
    stepwise.launch()  # the short request's last step
    stepwise.cancel("short")
    stepwise.submit("other", other)
    stepwise.admit()  # the row the cancel freed
    assert "other" not in stepwise.waiting()
    stepwise.launch()  # the new request's first step, behind the short one's last
    answers.update(stepwise.collect())
    assert answers == {}
    while stepwise.busy:
        answers.update(stepwise.advance(1))
    assert set(answers) == {"other"}
    _assert_same(reference.translate_batch([other]), [answers["other"]])


class _ReplayedOnCpu:
    """What a CUDA graph does, on a CPU: its replay runs the recorded work again, writing its output
    where the recording left it (a real graph reads the same addresses; this reads the same names)."""

    def __init__(self, run: Callable[[], object], output: object) -> None:
        self.run, self.output, self.replays = run, output, 0

    def replay(self) -> None:
        self.replays += 1
        output = self.run()
        if isinstance(self.output, torch.Tensor) and isinstance(output, torch.Tensor):
            self.output.copy_(output)


def test_a_search_recorded_as_graphs_replays_them_and_records_again_once_idle(
    embedded_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorded search's bookkeeping, its graphs replayed on a CPU: every step of a search
    replays a recorded shape and answers as CTranslate2; a source longer than the buffers held
    makes the model's buffers grow, so the steps of that search run op by op, and the next search
    (idle in between) records them again and replays them, into a new memory pool (a GPU's
    caching allocator refuses a capture into a pool whose graphs have all been let go)."""
    pools: list[object] = []  # the pool of each recording, in order

    def record(device: torch.device, run: Callable[[], object], pool: object = None) -> tuple[object, object]:
        pools.append(pool)
        for _ in range(2):  # the warm-up runs, as capture() runs them: for real
            run()
        graph = _ReplayedOnCpu(run, run())
        return graph, graph.output

    monkeypatch.setattr(model_module, "capture", record)
    monkeypatch.setattr(search_module, "capture", record)
    op_by_op: list[tuple[int, int, int]] = []  # the steps launched outside a graph
    decode_step = BeamSearch._decode_step

    def counted(self: BeamSearch, groups: int, source_length: int, span: int, within_graph: bool = False) -> object:
        if not within_graph:
            op_by_op.append((groups, source_length, span))
        return decode_step(self, groups, source_length, span, within_graph)

    monkeypatch.setattr(BeamSearch, "_decode_step", counted)
    reference, torch_engine = _pair(embedded_dir / "translate", beam_size=3)
    engine = torch_engine._torch
    engine.max_sentences, engine.search_graphs = 3, True
    engine.model.cuda_graphs = engine.model.pad_admissions = True  # as on a GPU
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", object)  # a new token for each pool
    engine.model._pool = torch.cuda.graph_pool_handle()
    stepwise = torch_engine.stepwise()
    search = stepwise._search
    shapes = dict(search._recorded)
    # Slots 1, 2, 4 (3 sentences padded), sources 16, 32, 64, spans 16 to 256.
    assert {shape[0] for shape in shapes} == {1, 2, 4} and {shape[1] for shape in shapes} == {16, 32, 64}

    def translate(requests: list[TranslateRequest]) -> list[Translation | InputError]:
        answers: dict[int, Translation | InputError] = {}
        for key, request in enumerate(requests):
            stepwise.submit(key, request)
            answers.update(stepwise.advance(1))
        while stepwise.busy:
            answers.update(stepwise.advance(1))
        return [answers[key] for key in range(len(requests))]

    _assert_same(reference.translate_batch(REQUESTS), translate(REQUESTS))
    assert sum(graph.replays for graph, _output in shapes.values()) > 0 and op_by_op == []
    # A source past 64 tokens: the buffers grow, the graphs read the old ones and are not replayed.
    long_text = TranslateRequest(" ".join(["Manao ahoana daholo ianareo"] * 14), "mg", "fr")
    replays = sum(graph.replays for graph, _output in shapes.values())
    recorded_before, pool_before = len(pools), engine.model.graph_pool
    _assert_same(reference.translate_batch([long_text]), translate([long_text]))
    assert sum(graph.replays for graph, _output in shapes.values()) == replays and op_by_op
    assert search._recorded_on != engine.model.graphs_generation
    op_by_op.clear()
    # Idle in between: the next search's first step records them again, on the new buffers.
    _assert_same(reference.translate_batch(REQUESTS[:2]), translate(REQUESTS[:2]))
    assert search._recorded_on == engine.model.graphs_generation
    assert {shape[1] for shape in search._recorded} == {16, 32, 64, 128}
    assert set(pools[:recorded_before]) == {pool_before}
    assert set(pools[recorded_before:]) == {engine.model.graph_pool} and engine.model.graph_pool is not pool_before
    assert sum(graph.replays for graph, _output in search._recorded.values()) > 0 and op_by_op == []


def test_a_longer_forced_prefix_in_a_padded_search_decodes_as_unpadded(embedded_dir: Path) -> None:
    """A prefix longer than any before grows the search's prefixes for every slot it may step over,
    padded slots included: the padded search answers as the unpadded one."""
    model = NllbModel.from_model_dir(embedded_dir / "translate")
    engine = Translator(embedded_dir / "translate", compute_type="float32", engine="torch")._torch
    options = engine.options(beam_size=2, max_decoding_length=12)
    sources = [engine.ids(["mlg_Latn", "▁Manao", "▁ahoana", "</s>"]), engine.ids(["fra_Latn", "▁Bonjour", "</s>"])]
    prefixes = [engine.ids(["fra_Latn"]), engine.ids(["mlg_Latn", "▁Manao", "▁ahoana"])]

    def search(padded: bool) -> list[Hypothesis]:
        searching = BeamSearch(model, options, 3, pad_groups=padded)
        tickets = [searching.add(source, prefix) for source, prefix in zip(sources, prefixes, strict=True)]
        results: dict[int, Hypothesis] = {}
        while searching.busy:
            results.update(searching.step())
        return [results[ticket] for ticket in tickets]

    unpadded = search(False)
    assert unpadded[1].tokens[:3] == prefixes[1]
    assert search(True) == unpadded


@pytest.mark.parametrize("width", [2 * TOP_CHUNK - 1, 4 * TOP_CHUNK, 5 * TOP_CHUNK + 7])
def test_each_row_s_best_taken_in_two_passes_are_topk_s(width: int) -> None:
    """Under two chunks: one pass; whole chunks; whole chunks and the columns past them, one row's
    best among those last columns."""
    values = torch.randn(6, width, generator=torch.Generator().manual_seed(width))
    values[0, width - 1] = 100.0
    best, columns = row_top(values, 4)
    expected_best, expected_columns = values.topk(4, dim=-1)
    assert torch.equal(best, expected_best) and torch.equal(columns, expected_columns)
    assert columns[0, 0] == width - 1


def test_a_step_s_attention_as_two_products_is_the_fused_kernel_s() -> None:
    """One query a row over slices of a cache (as a step reads them), each row seeing its own number
    of positions: what ``scaled_dot_product_attention`` gives."""
    generator = torch.Generator().manual_seed(0)
    rows, heads, width, length, span = 5, 4, 16, 40, 24
    keys = torch.randn(rows + 1, heads, length, width, generator=generator)[:rows, :, :span]
    values = torch.randn(rows + 1, heads, length, width, generator=generator)[:rows, :, :span]
    query = torch.randn(rows, heads, 1, width, generator=generator)
    seen = torch.tensor([1, 5, span, 10, 3])
    visible = (torch.arange(span)[None, :] < seen[:, None])[:, None, None, :]
    expected = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=visible)
    got = attend_one_position(query, keys, values, visible, float_scores=False)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)


def test_the_step_s_other_attention_and_selection_decode_as_ctranslate2(embedded_dir: Path) -> None:
    """The ways a GPU host may choose at load beside the defaults: attention as two products, each
    row's best logits in two passes (a vocabulary under two chunks takes one), named in the
    options, whole batches and a step-level search alike."""
    reference, torch_engine = _pair(embedded_dir / "translate", kernels=StepKernels("products", "two_passes"))
    engine = torch_engine._torch
    assert (engine.chosen.attention, engine.model.step_attention, engine.chosen.top_passes) == ("products",) * 2 + (2,)
    expected = reference.translate_batch(REQUESTS)
    _assert_same(expected, torch_engine.translate_batch(REQUESTS))
    stepwise = torch_engine.stepwise()
    assert stepwise._search.top_passes == 2
    for key, request in enumerate(REQUESTS):
        stepwise.submit(key, request)
    answers: dict[int, Translation | InputError] = {}
    while stepwise.busy:
        answers.update(stepwise.advance(4))
    _assert_same(expected, [answers[key] for key in range(len(REQUESTS))])
