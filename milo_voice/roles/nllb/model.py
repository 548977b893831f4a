"""NLLB (M2M100) in torch, with the weights of the CTranslate2 model it sits beside.

The encoder runs once per batch of sentences. The decoder runs one token per row a step, and a
step (every layer: self-attention over a static key/value cache, cross-attention over the
sentences' encoder states, the vocabulary projection) is captured once per shape as a CUDA graph
and replayed: at the batch sizes a voice assistant sends, CTranslate2's decoding on a GPU is paced
by its hundreds of small kernel launches a step, not by arithmetic, and a replayed graph is one
launch.

The layers are CTranslate2's ``TransformerSpec`` as its converter writes NLLB: pre-norm blocks,
scaled embeddings plus sinusoidal position encodings, a final layer norm on each side, the fused
query/key/value projection of self-attention and the fused key/value projection of cross-attention.
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from milo_voice.roles.attention_heads import attend_one_position, float_scores_supported, merge_heads, split_heads
from milo_voice.roles.ctranslate2_files import LAYER_NORM_EPSILON, ModelFileError, read_model_bin, weight_tensor
from milo_voice.roles.cuda_graphs import capture
from milo_voice.roles.host_to_device import queued_copy, write_queued
from milo_voice.roles.nllb.kernels import STEP_ATTENTIONS, UNTIMED

# CTranslate2's activation enum (include/ctranslate2/ops/activation.h) to torch.
ACTIVATIONS = {0: functional.relu, 1: lambda x: functional.gelu(x, approximate="tanh"), 3: functional.gelu}
# Source lengths are rounded up to one of these steps of cross-attention buffers (powers of two),
# so that a handful of captured graphs serve every sentence length.
MIN_SOURCE_BUCKET = 16
# Self-attention reads the positions written so far, rounded up the same way: a step's attention
# over the whole cache would read the keys and values of every position to ``max_length``.
MIN_SPAN = 16
# The source lengths whose graphs a warm-up captures (rounded up as above): a voice assistant's
# sentences; a longer one makes the buffers grow, and its graphs are captured when first needed.
WARM_SOURCE_LENGTHS = (16, 32, 64)


# The layout this module computes, as CTranslate2's spec records it: another TransformerSpec (a
# post-norm model, ALiBi, one shared key/value head, a norm after the embeddings) is refused, not
# computed wrongly.
LAYOUT = {"encoder/pre_norm": 1, "decoder/pre_norm": 1, "decoder/alibi": 0, "encoder/multi_query_attention": 0}


def _check_layout(weights: dict[str, np.ndarray]) -> None:
    differs = [name for name, value in LAYOUT.items() if name in weights and int(weights[name]) != value]
    differs += [name for name in weights if "layernorm_embedding" in name or "rms_norm" in name]
    for side in ("encoder", "decoder"):
        if int(weights.get(f"{side}/activation", 0)) not in ACTIVATIONS:
            differs.append(f"{side}/activation")
    if differs:
        raise ModelFileError(f"not NLLB's layout, which the torch engine computes: {', '.join(sorted(differs))}")


def power_of_two(n: int, least: int = 1) -> int:
    return max(least, 1 << (n - 1).bit_length())


class NllbModel:
    """The encoder and the step decoder of a CTranslate2 NLLB model directory."""

    def __init__(
        self,
        weights: dict[str, np.ndarray],
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int = 256,
        cuda_graphs: bool | None = None,
    ) -> None:
        _check_layout(weights)
        self.device, self.dtype = torch.device(device), dtype
        converted: dict[int, torch.Tensor] = {}  # shared embeddings are one array under three names

        def tensor(name: str) -> torch.Tensor:
            key = id(weights[name])
            if key not in converted:
                converted[key] = weight_tensor(weights, name, self.device, dtype)
            return converted[key]

        self._w = {name: tensor(name) for name in weights if weights[name].ndim > 0 and not name.endswith("_scale")}
        self.num_heads = int(weights["encoder/num_heads"])
        self.encoder_layers = sum(1 for n in self._w if n.startswith("encoder/") and n.endswith("ffn/linear_0/weight"))
        self.decoder_layers = sum(1 for n in self._w if n.startswith("decoder/") and n.endswith("ffn/linear_0/weight"))
        self.vocabulary_size, self.width = self._w["decoder/embeddings/weight"].shape
        self.head_width = self.width // self.num_heads
        self.max_length = min(max_length, self._w["decoder/position_encodings/encodings"].shape[0])
        self.max_source_length = self._w["encoder/position_encodings/encodings"].shape[0]
        self._scale = {side: self._embedding_scale(weights, side) for side in ("encoder", "decoder")}
        self._activation = {
            side: ACTIVATIONS[int(weights.get(f"{side}/activation", 0))] for side in ("encoder", "decoder")
        }
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        # Admissions padded to a power of two of sentences, as their graphs need (tests pad on a CPU).
        self.pad_admissions = self.cuda_graphs
        self._step_attention = UNTIMED.attention
        self._buffers = _StepBuffers(self, 0, 0)
        # Counts what makes a graph recorded before it stale: the buffers replaced (it would read the
        # old ones), the step's attention changed.
        self.graphs_generation = 0
        # Steps by rows, source bucket, span and attention's way; admissions by sentences, source
        # bucket and beam, with their inputs. The graphs share one memory pool (a new one once they
        # are let go): what one computes is written to the buffers, its scratch dead once it has
        # run, so the graphs take the memory of the largest.
        self._graphs: dict[tuple[int, int, int, str], torch.cuda.CUDAGraph] = {}
        self._admissions: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    @property
    def graph_pool(self) -> tuple[int, int] | None:
        """The memory pool of the model's graphs, for a caller's graph that records a step with its own work
        (``BeamSearch``): replayed in turn with them on one stream, it reuses their scratch memory."""
        return self._pool

    @property
    def step_attention(self) -> str:
        """How a step attends (``STEP_ATTENTIONS``): torch's fused kernel, or two matrix products
        (``attend_one_position``). ``milo_voice.roles.nllb.tuning`` picks one at load."""
        return self._step_attention

    @step_attention.setter
    def step_attention(self, way: str) -> None:
        if way not in STEP_ATTENTIONS:
            raise ValueError(f"step attention {way!r}: one of {', '.join(STEP_ATTENTIONS)}")
        if way != self._step_attention:
            self._step_attention = way
            # The model's step graphs are kept by way (timing at load switches back and forth);
            # a search's recorded steps, with the other way inside, are stale.
            self.graphs_generation += 1

    @property
    def source_capacity(self) -> int:
        """The longest source, in tokens, that the buffers hold now."""
        return self._buffers.source_length

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int = 256,
        cuda_graphs: bool | None = None,
    ) -> NllbModel:
        weights = read_model_bin(Path(model_dir) / "model.bin", expected_spec="TransformerSpec")
        return cls(weights, device, dtype, max_length, cuda_graphs)

    @staticmethod
    def _embedding_scale(weights: dict[str, np.ndarray], side: str) -> float:
        """CTranslate2's ``scale_embeddings``: a flag for sqrt(width), or the scale itself."""
        width = weights[f"{side}/embeddings{'_0' if side == 'encoder' else ''}/weight"].shape[1]
        value = weights.get(f"{side}/scale_embeddings")
        if value is None or (value.dtype == np.int8 and int(value)):
            return float(np.sqrt(width))
        return 1.0 if value.dtype == np.int8 else float(value)

    # -- the encoder -----------------------------------------------------------

    def _sources(self, sources: list[list[int]], count: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[count, length]`` token ids of the right-padded sources (sentences past them: padding), and
        True where a source has a token (a padding sentence has its first: it attends somewhere)."""
        ids = torch.zeros(count, length, dtype=torch.long)
        present = torch.zeros(count, length, dtype=torch.bool)
        present[len(sources) :, 0] = True
        for row, source in enumerate(sources):
            ids[row, : len(source)] = torch.tensor(source)
            present[row, : len(source)] = True
        return ids, present

    def _encode(self, ids: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``[batch, length, width]`` encoder states of ``ids`` where ``present``."""
        w = self._w
        x = functional.embedding(ids, w["encoder/embeddings_0/weight"]) * self._scale["encoder"]
        x = x + w["encoder/position_encodings/encodings"][: ids.shape[1]]
        visible = present[:, None, None, :]
        for index in range(self.encoder_layers):
            name = f"encoder/layer_{index}/self_attention/"
            projected = self._linear(self._norm(x, name), name + "linear_0/")
            query, key, value = split_heads(projected, self.head_width).chunk(3, dim=1)
            attended = functional.scaled_dot_product_attention(query, key, value, attn_mask=visible)
            x = x + self._linear(merge_heads(attended), name + "linear_1/")
            x = x + self._feed_forward(x, f"encoder/layer_{index}/ffn/", "encoder")
        return self._norm(x, "encoder/")

    # -- the decoder, a step at a time ------------------------------------------------
    # Each row holds one beam of one sentence, at its own position: sentences placed while others
    # decode join them at the next step (``milo_voice/roles/nllb/search.py``).

    def slots(self, rows: int) -> int:
        """Rows a step computes: a power of two with CUDA graphs, so that few graphs serve every batch."""
        return power_of_two(rows) if self.cuda_graphs else rows

    @torch.inference_mode()
    def admit(self, sources: list[list[int]], first_rows: list[int], beam_size: int) -> None:
        """Encode ``sources`` and make sentence ``i``'s cross-attention keys and values ready in rows
        ``first_rows[i]`` to ``first_rows[i] + beam_size - 1``, for ``step``; the other rows keep theirs.

        The sources are padded to a power of two of sentences and of tokens, the padding sentences
        written to a spare row that no step reads. With CUDA graphs each such shape is one graph,
        replayed: sentences join a running search a few at a time, nearly every step, and launching
        a dozen encoder layers' kernels one by one would take the host longer than the step.
        """
        longest = max(len(s) for s in sources)
        if longest > self.max_source_length:
            raise ValueError(f"a source of {longest} tokens is longer than the model's {self.max_source_length}")
        count = power_of_two(len(sources)) if self.pad_admissions else len(sources)
        bucket = min(power_of_two(longest, MIN_SOURCE_BUCKET), self.max_source_length)
        ids, present = self._sources(sources, count, bucket)
        buffers = self._reserve(self.slots(max(first_rows) + beam_size), bucket)
        rows = torch.full((count, beam_size), buffers.spare_row, dtype=torch.long)
        rows[: len(sources)] = torch.tensor(first_rows)[:, None] + torch.arange(beam_size)
        inputs = (ids, present, rows.view(-1))
        if not self.cuda_graphs:
            self._admit(*(queued_copy(tensor, self.device) for tensor in inputs), beam_size)
            return
        key = (count, bucket, beam_size)
        if key not in self._admissions:
            static = tuple(queued_copy(tensor, self.device) for tensor in inputs)
            run = lambda: self._admit(*static, beam_size)  # noqa: E731
            self._admissions[key] = (capture(self.device, run, self._pool)[0], static)
        graph, static = self._admissions[key]
        for target, tensor in zip(static, inputs, strict=True):
            write_queued(target, tensor)
        graph.replay()

    def _admit(self, ids: torch.Tensor, present: torch.Tensor, rows: torch.Tensor, beam_size: int) -> None:
        """Encode ``ids`` and write each sentence's cross-attention keys and values, and which source
        positions it sees, in its ``beam_size`` rows of ``rows``; reads and writes only fixed addresses."""
        states, length, buffers = self._encode(ids, present), ids.shape[1], self._buffers
        buffers.cross_visible.index_fill_(0, rows, False)  # a scalar: no copy from the host in a graph
        buffers.cross_visible[rows, 0, 0, :length] = present.repeat_interleave(beam_size, dim=0)
        for index in range(self.decoder_layers):
            name = f"decoder/layer_{index}/attention/"
            projected = self._linear(states, name + "linear_1/")
            key, value = split_heads(projected, self.head_width).chunk(2, dim=1)
            buffers.cross[index, 0, rows, :, :length] = key.repeat_interleave(beam_size, dim=0)
            buffers.cross[index, 1, rows, :, :length] = value.repeat_interleave(beam_size, dim=0)

    @torch.inference_mode()
    def step(
        self, tokens: torch.Tensor, positions: torch.Tensor, source_length: int, span: int, within_graph: bool = False
    ) -> torch.Tensor:
        """Feed one token per row, each row at its own position (below ``span``, at most
        ``max_length``: the caller's to keep, as reading them back here would wait for the GPU), over
        sources of at most ``source_length`` tokens: ``[rows, vocabulary]`` logits of the next, in the
        model's dtype, which the next step writes again. ``within_graph``: the caller records this
        step in a CUDA graph of its own, so it runs kernel by kernel here (a graph replays no other)."""
        buffers, rows = self._buffers, len(tokens)
        if rows > buffers.rows or source_length > buffers.source_length or span > self.max_length:
            raise ValueError("step past the rows, source length or positions placed")
        buffers.tokens[:rows].copy_(tokens, non_blocking=True)
        buffers.positions[:rows].copy_(positions, non_blocking=True)
        shape = (self.slots(rows), self.source_bucket(source_length), self.span_bucket(span))
        if within_graph:
            self._forward(*shape)
        else:
            self._run(*shape)
        return buffers.logits[:rows]

    def source_bucket(self, source_length: int) -> int:
        """The cross-attention positions a step over sources of ``source_length`` tokens reads."""
        return power_of_two(source_length, MIN_SOURCE_BUCKET)

    def span_bucket(self, span: int) -> int:
        """The self-attention positions a step over ``span`` positions written reads."""
        return min(power_of_two(span, MIN_SPAN), self.max_length)

    @torch.inference_mode()
    def reorder(self, origins: torch.Tensor, length: int) -> None:
        """Each row's self-attention cache (its first ``length`` positions) taken from row ``origins[row]``
        (a tensor on the model's device): the beams that continue come from those that were."""
        cache = self._buffers.self_cache[:, :, : len(origins), :, :length]
        cache.copy_(cache.index_select(2, origins))

    def warm_up(
        self, max_sentences: int, beam_size: int, source_lengths: tuple[int, ...] = WARM_SOURCE_LENGTHS
    ) -> None:
        """Claim the buffers and capture the graphs of every row count up to ``max_sentences`` of
        ``beam_size`` beams, and of admitting up to that many sentences, now."""
        if not self.cuda_graphs:
            return
        max_rows = max_sentences * beam_size
        self._reserve(self.slots(max_rows), max(self.source_bucket(n) for n in source_lengths))
        spans = sorted({self.span_bucket(n) for n in range(1, self.max_length + 1)}, reverse=True)
        for length in sorted(source_lengths, reverse=True):
            for rows, span in itertools.product(sorted({self.slots(r) for r in range(1, max_rows + 1)}), spans):
                zeros = torch.zeros(rows, dtype=torch.long, device=self.device)
                self.step(zeros, zeros, length, span)
            # Into rows no sentence holds yet: each sentence admitted later writes its own again.
            for count in sorted({power_of_two(n) for n in range(1, max_sentences + 1)}, reverse=True):
                self.admit([[0] * length] * count, [i * beam_size for i in range(count)], beam_size)

    def reserve(self, rows: int, source_length: int = 0) -> None:
        """Buffers for steps of at least ``rows`` rows and sources of ``source_length`` tokens, now:
        a step may cover rows past the sentences admitted (``BeamSearch`` with ``pad_groups``), and
        a step recorded by its caller reads the buffers it was recorded on."""
        self._reserve(self.slots(rows), max(self.source_bucket(source_length), self._buffers.source_length))

    def _reserve(self, rows: int, bucket: int) -> _StepBuffers:
        """Buffers for at least ``rows`` rows and sources of ``bucket`` tokens: where smaller, larger
        ones replace them, holding what the sentences decoding have placed and cached so far."""
        buffers = self._buffers
        if rows > buffers.rows or bucket > buffers.source_length:
            self._buffers = _StepBuffers(self, max(rows, buffers.rows), max(bucket, buffers.source_length))
            self._buffers.take_over(buffers)
            self._drop_graphs()  # they read the buffers just replaced
        return self._buffers

    def _drop_graphs(self) -> None:
        """Let go of every graph captured, and capture the next ones into a new memory pool: the
        caching allocator refuses a capture into a pool whose graphs have all been let go (it
        asserts the pool's use count), and frees the old pool with the last graph that holds it
        (a search's recorded steps, until recorded again)."""
        self._graphs.clear()
        self._admissions.clear()
        if self._pool is not None:
            self._pool = torch.cuda.graph_pool_handle()
        self.graphs_generation += 1

    def _run(self, rows: int, bucket: int, span: int) -> None:
        if not self.cuda_graphs:
            self._forward(rows, bucket, span)
            return
        key = (rows, bucket, span, self._step_attention)
        if key not in self._graphs:
            # The warm-up runs write the cache at the current position, which the step that follows
            # writes again.
            self._graphs[key] = capture(self.device, lambda: self._forward(rows, bucket, span), self._pool)[0]
        self._graphs[key].replay()

    def _forward(self, rows: int, bucket: int, span: int) -> None:
        """One step of ``rows`` rows, its logits written to the buffers; reads and writes only
        ``self._buffers`` (fixed addresses)."""
        buffers, w = self._buffers, self._w
        positions = buffers.positions[:rows]
        x = functional.embedding(buffers.tokens[:rows], w["decoder/embeddings/weight"]) * self._scale["decoder"]
        x = (x + w["decoder/position_encodings/encodings"].index_select(0, positions))[:, None]  # [rows, 1, width]
        visible = (buffers.cache_positions[None, :span] <= positions[:, None])[:, None, None, :]  # [rows, 1, 1, span]
        # Where each row writes its key and value: its own position, in every head (a row no sentence
        # holds may be past the span: it writes in it, and what it computes is read by nobody).
        written = positions.clamp(max=span - 1).view(rows, 1, 1, 1).expand(rows, self.num_heads, 1, self.head_width)
        cross_visible = buffers.cross_visible[:rows, :, :, :bucket]
        for index in range(self.decoder_layers):
            name = f"decoder/layer_{index}/self_attention/"
            projected = self._linear(self._norm(x, name), name + "linear_0/")
            query, key, value = split_heads(projected, self.head_width).chunk(3, dim=1)
            keys = buffers.self_cache[index, 0, :rows, :, :span]
            values = buffers.self_cache[index, 1, :rows, :, :span]
            keys.scatter_(2, written, key)
            values.scatter_(2, written, value)
            attended = self._attend(query, keys, values, visible)
            x = x + self._linear(merge_heads(attended), name + "linear_1/")

            name = f"decoder/layer_{index}/attention/"
            query = split_heads(self._linear(self._norm(x, name), name + "linear_0/"), self.head_width)
            keys = buffers.cross[index, 0, :rows, :, :bucket]
            values = buffers.cross[index, 1, :rows, :, :bucket]
            attended = self._attend(query, keys, values, cross_visible)
            x = x + self._linear(merge_heads(attended), name + "linear_2/")
            x = x + self._feed_forward(x, f"decoder/layer_{index}/ffn/", "decoder")
        x = self._norm(x[:, 0], "decoder/")
        logits, weight, bias = buffers.logits[:rows], w["decoder/projection/weight"], w.get("decoder/projection/bias")
        if bias is None:
            torch.mm(x, weight.t(), out=logits)
        else:
            torch.addmm(bias, x, weight.t(), out=logits)

    # -- pieces ------------------------------------------------------------------

    def _attend(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        """A step's attention: each row's one query over its ``visible`` keys and values."""
        if self.step_attention == "fused":
            return functional.scaled_dot_product_attention(query, keys, values, attn_mask=visible)
        return attend_one_position(query, keys, values, visible, self._float_scores)

    @functools.cached_property
    def _float_scores(self) -> bool:
        # Tried when the products first run, not at load: the fused kernel (the default) needs none.
        # A step's first run is never a graph's recording (capture runs it twice first).
        return float_scores_supported(self.device, self.dtype, self.head_width)

    def _norm(self, x: torch.Tensor, block: str) -> torch.Tensor:
        """The layer norm a pre-norm block opens with (or the side's final one)."""
        gamma, beta = self._w[block + "layer_norm/gamma"], self._w[block + "layer_norm/beta"]
        return functional.layer_norm(x, x.shape[-1:], gamma, beta, LAYER_NORM_EPSILON)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return functional.linear(x, self._w[name + "weight"], self._w.get(name + "bias"))

    def _feed_forward(self, x: torch.Tensor, name: str, side: str) -> torch.Tensor:
        hidden = self._activation[side](self._linear(self._norm(x, name), name + "linear_0/"))
        return self._linear(hidden, name + "linear_1/")


class _StepBuffers:
    """What a decoding step reads and writes, allocated once for ``rows`` rows and sources of up to
    ``source_length`` tokens."""

    def __init__(self, model: NllbModel, rows: int, source_length: int) -> None:
        heads, head_width = model.num_heads, model.head_width
        options = {"device": model.device, "dtype": model.dtype}
        self.rows, self.source_length = rows, source_length
        self.tokens = torch.zeros(rows, dtype=torch.long, device=model.device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=model.device)
        self.cache_positions = torch.arange(model.max_length, device=model.device)
        self.logits = torch.zeros(rows, model.vocabulary_size, **options)
        # [layer, key or value, row, head, position, head width]: one gather reorders every layer's beams.
        self.self_cache = torch.zeros(model.decoder_layers, 2, rows, heads, model.max_length, head_width, **options)
        # One row more, the spare: where sentences that pad an admission are written, read by no step.
        self.spare_row = rows
        self.cross = torch.zeros(model.decoder_layers, 2, rows + 1, heads, source_length, head_width, **options)
        self.cross_visible = torch.zeros(rows + 1, 1, 1, source_length, dtype=torch.bool, device=model.device)
        self.cross_visible[:, :, :, :1] = True  # a row no sentence holds attends somewhere: no NaN

    def take_over(self, smaller: _StepBuffers) -> None:
        """Copy in what ``smaller`` holds (its rows, its source positions)."""
        rows, length = smaller.rows, smaller.source_length
        for name in ("tokens", "positions"):
            getattr(self, name)[:rows] = getattr(smaller, name)
        self.self_cache[:, :, :rows] = smaller.self_cache
        self.cross[:, :, :rows, :, :length] = smaller.cross[:, :, :rows]
        self.cross_visible[:rows, :, :, :length] = smaller.cross_visible[:rows]


def special_ids(model_dir: Path, vocabulary: dict[str, int]) -> tuple[int, int, int]:
    """The decoder's start, end and unknown token ids, from CTranslate2's ``config.json``."""
    config = json.loads((model_dir / "config.json").read_text())
    start = config.get("decoder_start_token") or config["eos_token"]
    return vocabulary[start], vocabulary[config["eos_token"]], vocabulary[config.get("unk_token", "<unk>")]
