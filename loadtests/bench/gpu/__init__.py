"""The GPU benchmark: production-shaped models on a lent H100/H200, served by the PyTriton host.

Run on the GPU machine through ``loadtests/bench/gpu_device.sh`` (which sets up the libraries),
one phase per call (``python -m loadtests.bench.gpu PHASE``; one module per phase: ``build``,
``inprocess``, ``tune``, ``served``; ``variants`` writes their registries); every phase keeps its
state under ``--work`` and writes its results to ``--work/results/<phase>.json``:

  build      the production shapes with seeded weights (``loadtests.bench.shapes``)
  inprocess  the role classes called directly on the GPU: the STT reference (turbo and large-v3
             at batch 1, 8 and 32, 32 tokens per 30 s window), batch sweeps of TTS and translation,
             instance sweep of chat, GPU memory per model; then ``tune`` picks batch sizes and
             instance counts from those curves and writes the tuned registry; with
             ``--references``, only the rates the served levels are set beside
  served     the whole stack (facade -> Triton -> model) with one registry variant: single-request
             latency, throughput at several concurrencies, real-time factors, tokens/s, GPU memory,
             Triton's own batch statistics
  locust     the Locust mixed scenario against the stack, gated on the audit table
  overhead   ``loadtests.bench.overhead`` on a variant: one request at a time, in process, on
             Triton directly and through the facade (where the served time goes, hop by hop)
  goals      the goals read from the results so far (``goals.py``): each served role at 64 clients
             over its in-process rate of the same work folder, one short question, the Locust mix

The results are read in ``docs/benchmarks.md`` (section 4).

Registry variants (``variants.py``): ``configured`` (model_repository/registry.toml as committed),
``unbatched`` (max_batch_size 1), ``tuned`` (from ``inprocess``), ``audit``, one model's name (that
model alone), or overlays joined by "+" (``stt-text+stt-x2+stt-q1``: the files of ``overlays/``).
Each variant fixes generation lengths, since seeded weights stop at random places: STT decodes 32
tokens per window (the reference's workload), translation 24 tokens, chat ``max_tokens`` (64).
"""
