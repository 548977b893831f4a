"""Whisper's text decoder in torch: greedy decoding with CUDA graphs, from a CTranslate2 model.bin.

The PyPI build of CTranslate2 launches hundreds of small kernels a decoding step, and at the batch
sizes of served speech the launches, not the arithmetic, set the pace (figures: docs/benchmarks.md,
section 4). Here one decoding iteration (every layer, self-attention over a static key/value cache,
cross-attention over the window's encoder states, the vocabulary projection, then the decoding
rules, the choice of each window's next token and its recording) is captured once per batch size
and set of rules as a CUDA graph and replayed: an iteration is one launch, and the host reads back
only, every few steps, whether every window has ended, and the tokens at the end.

What is decoded is what CTranslate2's ``Whisper.generate`` decodes with ``beam_size=1``: the same
prompt handling, the same suppressed tokens (``suppress_tokens`` with -1 meaning the model's
``suppress_ids``, ``suppress_blank`` meaning its ``suppress_ids_begin`` on the first step), the same
timestamp rules (src/models/whisper.cc, ``ApplyTimestampRules``: pairs, monotonic, the initial
timestamp at most 1 s, a timestamp forced when all timestamps together outweigh every text token),
the same no-speech probability (softmax at ``<|startoftranscript|>``) and the same cumulative
log-probability. Tests hold the two to the same tokens on the CPU in float32.

Like the encoder beside it (encoder.py), the weights come from the model directory
faster-whisper loads; nothing else is downloaded or converted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from milo_voice.roles.attention_heads import merge_heads, split_heads
from milo_voice.roles.ctranslate2_files import LAYER_NORM_EPSILON, read_model_bin, weight_tensor
from milo_voice.roles.cuda_graphs import capture

log = logging.getLogger(__name__)

# CTranslate2's WhisperOptions default: the first timestamp is at most 50 x 20 ms into the window.
MAX_INITIAL_TIMESTAMP_INDEX = 50
# Whisper's text context: no sequence, prompt included, is longer.
WHISPER_TEXT_CONTEXT = 448
# Decoding reads back whether every window has ended once every this many steps: a read waits for
# the GPU, and the steps decoded past the last end are wasted (their choices are not recorded).
DONE_CHECK_STEPS = 4


@dataclass(frozen=True)
class SpecialTokens:
    """The token ids the decoding rules need (from the model's vocabulary)."""

    sot: int  # <|startoftranscript|>
    eot: int  # <|endoftext|>
    no_timestamps: int  # <|notimestamps|>; the timestamps follow it
    no_speech: int  # <|nospeech|> (<|nocaptions|> before large-v3)

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1


@dataclass(frozen=True)
class WhisperDecoding:
    """One window's greedy decoding."""

    tokens: list[int]  # without the prompt and without <|endoftext|>
    logprob_sum: float  # sum of the chosen tokens' log-probabilities, <|endoftext|> included
    no_speech_prob: float


class WhisperDecoder:
    """Greedy decoding from ``[batch, frames, d_model]`` encoder states (encoder.py's output)."""

    def __init__(
        self,
        weights: dict[str, np.ndarray],
        config: dict,
        special: SpecialTokens,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int = WHISPER_TEXT_CONTEXT,
        cuda_graphs: bool | None = None,
    ) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.special = special
        self.num_heads = int(weights["decoder/num_heads"])
        self._weights = {
            name.removeprefix("decoder/"): weight_tensor(weights, name, self.device, dtype)
            for name in weights
            if weights[name].ndim > 0 and not name.endswith("weight_scale")
        }
        self.num_layers = sum(1 for name in self._weights if name.endswith("/self_attention/linear_0/weight"))
        self.vocabulary_size, self.width = self._weights["embeddings/weight"].shape
        self.head_width = self.width // self.num_heads
        self.max_length = min(max_length, self._weights["position_encodings/encodings"].shape[0])
        self._suppress_ids = [int(i) for i in config.get("suppress_ids", [])]
        self._suppress_ids_begin = [int(i) for i in config.get("suppress_ids_begin", [])]
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self._steps = _StepBuffers(self, 0, 0)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # One decoding iteration (a step, the rules, the choice) per row count and set of rules.
        self._greedy_graphs: dict[tuple[int, tuple[tuple[int, ...], bool, bool]], torch.cuda.CUDAGraph | None] = {}
        # The rules' masks depend only on the options, which a role keeps: built once per set.
        self._logit_rules: dict[tuple[tuple[int, ...], bool, bool], _LogitRules] = {}

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        special: SpecialTokens,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int = WHISPER_TEXT_CONTEXT,
        cuda_graphs: bool | None = None,
    ) -> WhisperDecoder:
        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        weights = read_model_bin(model_dir / "model.bin", prefix="decoder/")
        return cls(weights, config, special, device, dtype, max_length, cuda_graphs)

    # -- public API -------------------------------------------------------

    @torch.inference_mode()
    def start(self, encoder_states: torch.Tensor) -> DecoderSession:
        """Load a batch of windows and decode <|startoftranscript|>; the session decodes the rest."""
        batch, frames, _ = encoder_states.shape
        slots = self._slots(batch)
        if slots > self._steps.batch or frames != self._steps.frames:
            self._steps = _StepBuffers(self, max(slots, self._steps.batch), frames)
            self._graphs.clear()  # they read the buffers that were just replaced
            self._greedy_graphs.clear()
        states = encoder_states.to(self.device, self.dtype)
        for index, (keys, values) in enumerate(self._steps.cross):
            projected = self._linear(states, f"layer_{index}/attention/linear_1/")
            key, value = split_heads(projected, self.head_width).chunk(2, dim=1)
            keys[:batch].copy_(key)
            values[:batch].copy_(value)
        session = DecoderSession(self, batch)
        session.sot_logits = session.step(torch.full((batch,), self.special.sot, dtype=torch.long))
        return session

    def warm_up(
        self,
        max_batch: int,
        prompts: list[list[int]] | None = None,
        suppress_tokens: tuple[int, ...] = (-1,),
        frames: int = 1500,
    ) -> None:
        """Claim the buffers for ``max_batch`` windows and capture every graph now, not in first
        requests: each step's, and each decoding iteration's for each of ``prompts``' rules."""
        states = torch.zeros(max_batch, frames, self.width, device=self.device, dtype=self.dtype)
        for rows in sorted({self._slots(b) for b in range(1, max_batch + 1)}, reverse=True):
            self.start(states[:rows])
            for prompt in prompts or []:
                self.start(states[:rows]).generate([prompt] * rows, 2, suppress_tokens)

    def language_probabilities(self, sot_logits: torch.Tensor, language_ids: list[int]) -> np.ndarray:
        """``[batch, len(language_ids)]``: the languages' probabilities among themselves."""
        return torch.softmax(sot_logits[:, language_ids], dim=-1).cpu().numpy()

    def logit_rules(self, suppress_tokens: tuple[int, ...], suppress_blank: bool, timestamps: bool) -> _LogitRules:
        key = (suppress_tokens, suppress_blank, timestamps)
        if key not in self._logit_rules:
            self._logit_rules[key] = _LogitRules(self, *key)
        return self._logit_rules[key]

    # -- one decoding step ---------------------------------------------------

    def _slots(self, batch: int) -> int:
        """Rows a batch takes: a power of two on the GPU, so that few graphs serve every size."""
        return 1 << (batch - 1).bit_length() if self.cuda_graphs else batch

    def _forward(self, rows: int) -> torch.Tensor:
        """One token per row at ``steps.position``: updates the cache and returns ``[rows, vocabulary]`` logits.

        Everything it reads and writes is in ``self._steps`` (fixed addresses), so it can be
        captured as a CUDA graph and replayed.
        """
        steps, w = self._steps, self._weights
        position = steps.position
        x = functional.embedding(steps.tokens[:rows], w["embeddings/weight"])
        x = (x + w["position_encodings/encodings"].index_select(0, position))[:, None]  # [rows, 1, width]
        visible = (steps.cache_positions <= position)[None, None, None]  # causal: up to this token
        for index in range(self.num_layers):
            name = f"layer_{index}/self_attention/"
            projected = self._linear(self._layer_norm(x, name), name + "linear_0/")
            query, key, value = split_heads(projected, self.head_width).chunk(3, 1)
            keys, values = steps.self_cache[index]
            keys[:rows].index_copy_(2, position, key)
            values[:rows].index_copy_(2, position, value)
            attended = functional.scaled_dot_product_attention(query, keys[:rows], values[:rows], attn_mask=visible)
            x = x + self._linear(merge_heads(attended), name + "linear_1/")

            name = f"layer_{index}/attention/"
            query = split_heads(self._linear(self._layer_norm(x, name), name + "linear_0/"), self.head_width)
            keys, values = steps.cross[index]
            attended = functional.scaled_dot_product_attention(query, keys[:rows], values[:rows])
            x = x + self._linear(merge_heads(attended), name + "linear_2/")

            name = f"layer_{index}/ffn/"
            hidden = functional.gelu(self._linear(self._layer_norm(x, name), name + "linear_0/"))
            x = x + self._linear(hidden, name + "linear_1/")
        x = functional.layer_norm(x[:, 0], (self.width,), w["layer_norm/gamma"], w["layer_norm/beta"],
                                  LAYER_NORM_EPSILON)  # fmt: skip
        return functional.linear(x, w["projection/weight"])

    def _layer_norm(self, x: torch.Tensor, block: str) -> torch.Tensor:
        """The layer norm a pre-norm block opens with."""
        gamma, beta = self._weights[block + "layer_norm/gamma"], self._weights[block + "layer_norm/beta"]
        return functional.layer_norm(x, x.shape[-1:], gamma, beta, LAYER_NORM_EPSILON)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return functional.linear(x, self._weights[name + "weight"], self._weights[name + "bias"])

    def _run_step(self, rows: int) -> torch.Tensor:
        if not self.cuda_graphs:
            return self._forward(rows)
        if rows not in self._graphs:
            self._graphs[rows] = self._capture(rows)
        graph, logits = self._graphs[rows]
        graph.replay()
        return logits

    def _greedy_iteration(self, rows: int, rules: _LogitRules) -> None:
        """Feed each row's last choice, apply the rules to the logits and choose again, all on the
        device: one step of ``generate`` after its first, with nothing read back."""
        steps = self._steps
        logits = self._forward(rows).to(torch.float32)
        rules.choose(logits, steps.greedy, first=False)
        steps.tokens[:rows].copy_(steps.greedy.chosen[:rows])
        steps.position.add_(1)

    def _run_greedy(self, rows: int, rules: _LogitRules) -> None:
        key = (rows, rules.key)
        if self.cuda_graphs and key not in self._greedy_graphs:
            try:
                self._greedy_graphs[key] = self._capture_greedy(rows, rules)
            except RuntimeError as exc:  # decode on, launch by launch, rather than fail the batch
                log.warning("decoding %d rows without a CUDA graph: capture failed (%s)", rows, exc)
                self._greedy_graphs[key] = None
        graph = self._greedy_graphs.get(key)
        if graph is None:
            self._greedy_iteration(rows, rules)
        else:
            graph.replay()

    def _capture_greedy(self, rows: int, rules: _LogitRules) -> torch.cuda.CUDAGraph:
        """Record one iteration. The warm-up runs capture needs do decode, so what they change (the
        tokens, the position, the decoding state) is put back before the graph first runs; what they
        wrote in the cache at later positions is written again before it is read."""
        steps = self._steps
        changed = (steps.tokens, steps.position, *steps.greedy.tensors())
        saved = [t.clone() for t in changed]
        graph, _ = capture(self.device, lambda: self._greedy_iteration(rows, rules))
        for tensor, value in zip(changed, saved, strict=True):
            tensor.copy_(value)
        return graph

    def _capture(self, rows: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Record one step for ``rows`` rows, after warm-up runs on a side stream (what capture needs).

        The warm-up runs write the cache at the current position, which the step that follows
        writes again, so nothing decoded is disturbed.
        """
        return capture(self.device, lambda: self._forward(rows))


class _StepBuffers:
    """The tensors a decoding step reads and writes, allocated once for ``batch`` rows of ``frames``."""

    def __init__(self, decoder: WhisperDecoder, batch: int, frames: int) -> None:
        heads, head_width = decoder.num_heads, decoder.head_width
        options = {"device": decoder.device, "dtype": decoder.dtype}
        self.batch, self.frames = batch, frames
        self.tokens = torch.zeros(batch, dtype=torch.long, device=decoder.device)
        self.position = torch.zeros(1, dtype=torch.long, device=decoder.device)
        self.cache_positions = torch.arange(decoder.max_length, device=decoder.device)
        self.self_cache = [
            (
                torch.zeros(batch, heads, decoder.max_length, head_width, **options),
                torch.zeros(batch, heads, decoder.max_length, head_width, **options),
            )
            for _ in range(decoder.num_layers)
        ]
        self.cross = [
            (torch.zeros(batch, heads, frames, head_width, **options),
             torch.zeros(batch, heads, frames, head_width, **options))
            for _ in range(decoder.num_layers)
        ]  # fmt: skip
        self.greedy = _GreedyState(batch, decoder.max_length, decoder.device)


class _GreedyState:
    """What greedy decoding keeps per row on the device between steps (fixed addresses, as the
    captured iterations read and write them)."""

    def __init__(self, rows: int, max_length: int, device: torch.device) -> None:
        def longs(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.long, device=device)

        self.chosen = longs(rows)  # this step's choice
        self.last = longs(rows)  # the last decoded token, the one before it, the last timestamp
        self.penultimate = longs(rows)
        self.last_timestamp = longs(rows)
        self.count = longs(rows)  # tokens decoded (the end of text excluded)
        self.done = torch.zeros(rows, dtype=torch.bool, device=device)  # the end of text was chosen
        self.logprob_sum = torch.zeros(rows, dtype=torch.float32, device=device)
        self.history = longs(rows, max_length)  # the choice of each step, -1 once a row is done
        self.step = longs(1)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.chosen, self.last, self.penultimate, self.last_timestamp, self.count, self.done,
                self.logprob_sum, self.history, self.step)  # fmt: skip

    def advance(self, best: torch.Tensor, best_logprob: torch.Tensor, eot: int, timestamp_begin: int) -> None:
        """Record each row's choice (``best``, one per row from the first); a row that chose the end
        of text is done and records nothing more."""
        rows = len(best)
        alive = ~self.done[:rows]
        kept = alive & (best != eot)
        self.logprob_sum[:rows] += torch.where(alive, best_logprob, 0.0)  # the end of text's included
        self.history[:rows].index_copy_(1, self.step, torch.where(kept, best, -1)[:, None])
        self.penultimate[:rows] = torch.where(kept, self.last[:rows], self.penultimate[:rows])
        self.last[:rows] = torch.where(kept, best, self.last[:rows])
        self.last_timestamp[:rows] = torch.where(kept & (best >= timestamp_begin), best, self.last_timestamp[:rows])
        self.count[:rows] += kept.long()
        self.done[:rows] |= alive & ~kept
        self.chosen[:rows] = best
        self.step += 1

    def reset(self, batch: int) -> None:
        for tensor in (self.chosen, self.last, self.penultimate, self.count, self.logprob_sum, self.step):
            tensor.zero_()
        self.last_timestamp.fill_(-1)
        self.history.fill_(-1)
        self.done.zero_()
        self.done[batch:] = True  # rows past the batch (padding to a graph's size) decode nothing


class DecoderSession:
    """One batch of windows being decoded: the prompt after <|startoftranscript|>, then greedy steps."""

    def __init__(self, decoder: WhisperDecoder, batch: int) -> None:
        self.decoder = decoder
        self.batch = batch
        self.rows = decoder._slots(batch)
        self.position = 0
        self.sot_logits: torch.Tensor = torch.empty(0)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per window; ``[batch, vocabulary]`` float32 logits of the next token."""
        steps = self.decoder._steps
        if self.position >= self.decoder.max_length:
            raise ValueError(f"the decoder holds at most {self.decoder.max_length} tokens per window")
        steps.tokens[: self.batch].copy_(tokens, non_blocking=True)
        steps.position.fill_(self.position)
        logits = self.decoder._run_step(self.rows)
        self.position += 1
        # A copy: a replayed graph writes the next step's logits where these are.
        return logits[: self.batch].to(torch.float32, copy=True)

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        suppress_tokens: list[int] | tuple[int, ...] = (-1,),
        suppress_blank: bool = True,
    ) -> list[WhisperDecoding]:
        """Decode each window from its prompt (which starts with <|startoftranscript|>, already fed).

        The prompts are equally long, as CTranslate2 also requires. Timestamps are decoded unless a
        prompt ends with <|notimestamps|>.
        """
        special = self.decoder.special
        if len(prompts) != self.batch or len({len(p) for p in prompts}) != 1 or prompts[0][0] != special.sot:
            raise ValueError("one prompt per window, all of one length, each starting with <|startoftranscript|>")
        no_speech = torch.softmax(self.sot_logits, dim=-1)[:, special.no_speech].tolist()
        logits = self.sot_logits
        for position in range(1, len(prompts[0])):
            logits = self.step(torch.tensor([p[position] for p in prompts], dtype=torch.long))
        rules = self.decoder.logit_rules(
            tuple(suppress_tokens), suppress_blank, timestamps=prompts[0][-1] != special.no_timestamps
        )
        max_new_tokens = min(max_new_tokens, self.decoder.max_length - len(prompts[0]) + 1)
        steps = self.decoder._steps
        state = steps.greedy
        state.reset(self.batch)
        if max_new_tokens > 0:
            rules.choose(logits, state, first=True)
            steps.tokens[: self.batch].copy_(state.chosen[: self.batch])
            steps.position.fill_(self.position)
        # Each further step runs on the device from the last one's choice; whether every row has
        # ended is read back only every few steps (a read waits for the GPU).
        for step in range(1, max_new_tokens):
            if step % DONE_CHECK_STEPS == 0 and bool(state.done[: self.batch].all()):
                break
            self.decoder._run_greedy(self.rows, rules)
            self.position += 1
        history = state.history[: self.batch, : max(max_new_tokens, 0)].tolist()
        sums = state.logprob_sum[: self.batch].tolist()
        tokens = [[t for t in row if t >= 0] for row in history]
        return [WhisperDecoding(t, s, p) for t, s, p in zip(tokens, sums, no_speech, strict=True)]


class _LogitRules:
    """The suppressions and timestamp rules of CTranslate2's Whisper decoding, batched on the device."""

    def __init__(
        self, decoder: WhisperDecoder, suppress_tokens: tuple[int, ...], suppress_blank: bool, timestamps: bool
    ) -> None:
        special, device = decoder.special, decoder.device
        self.special, self.timestamps = special, timestamps
        self.key = (suppress_tokens, suppress_blank, timestamps)
        self.vocabulary_size = vocabulary = decoder.vocabulary_size
        always = {i for t in suppress_tokens for i in (decoder._suppress_ids if t == -1 else [t])}
        if timestamps:
            always.add(special.no_timestamps)
        self.always = self._mask(always, vocabulary, device)
        self.first = self._mask(always | set(decoder._suppress_ids_begin if suppress_blank else []), vocabulary,
                                device)  # fmt: skip
        if timestamps:
            # Only a timestamp, at most MAX_INITIAL_TIMESTAMP_INDEX, may open a window.
            first_timestamp = torch.zeros(vocabulary, dtype=torch.bool, device=device)
            first_timestamp[: special.timestamp_begin] = True
            first_timestamp[special.timestamp_begin + MAX_INITIAL_TIMESTAMP_INDEX + 1 :] = True
            self.first |= first_timestamp
        self.columns = torch.arange(vocabulary, device=device)

    @staticmethod
    def _mask(ids: set[int], size: int, device: torch.device) -> torch.Tensor:
        mask = torch.zeros(size, dtype=torch.bool, device=device)
        mask[sorted(i for i in ids if 0 <= i < size)] = True
        return mask

    def choose(self, logits: torch.Tensor, state: _GreedyState, first: bool) -> None:
        """The next token of each of ``logits``' rows, once every rule has removed what it forbids,
        recorded in ``state`` (on the device: nothing is read back)."""
        log_probs = self.log_probs(logits, state, first)
        best_logprob, best = log_probs.max(dim=-1)
        state.advance(best, best_logprob, self.special.eot, self.special.timestamp_begin)

    def log_probs(self, logits: torch.Tensor, state: _GreedyState, first: bool) -> torch.Tensor:
        """Log-probabilities of the next token once every rule has removed what it forbids."""
        if first:
            return torch.log_softmax(logits.masked_fill(self.first, -torch.inf), dim=-1)
        masked = logits.masked_fill(self.always, -torch.inf)
        if not self.timestamps:
            return torch.log_softmax(masked, dim=-1)
        text_end, first_allowed, weigh = self.bounds(state, len(logits))
        columns, begin = self.columns, self.special.timestamp_begin
        forbidden = (columns < text_end[:, None]) | ((columns >= begin) & (columns < first_allowed[:, None]))
        masked = masked.masked_fill(forbidden, -torch.inf)
        # Where all timestamps together are likelier than any one text token, take a timestamp.
        log_probs = torch.log_softmax(masked, dim=-1)
        timestamp = torch.logsumexp(log_probs[:, begin:], dim=-1) > log_probs[:, :begin].max(dim=-1).values
        masked = masked.masked_fill((timestamp & weigh)[:, None] & (columns < begin), -torch.inf)
        return torch.log_softmax(masked, dim=-1)

    def bounds(self, state: _GreedyState, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row: text ids below which are forbidden, the first timestamp allowed (one past the
        last id forbids them all), and whether the timestamps' weight against text is checked."""
        begin, end = self.special.timestamp_begin, self.vocabulary_size - 1
        last, count = state.last[:rows], state.count[:rows]
        previous = state.last_timestamp[:rows]
        penultimate = torch.where(count > 1, state.penultimate[:rows], last)
        last_is_timestamp = (count > 0) & (last >= begin)
        closed = last_is_timestamp & (penultimate >= begin)  # a pair just closed: text must follow
        opened = last_is_timestamp & ~closed  # its closing timestamp (maybe equal) or the end must follow
        text_end = torch.where(opened, self.special.eot, 0)
        # After text, time moves on: segments are never empty.
        after_text = torch.where(previous >= 0, previous + 1, begin)
        first_allowed = torch.where(closed, end + 1, torch.where(opened, last, after_text))
        return text_end, first_allowed, ~closed
