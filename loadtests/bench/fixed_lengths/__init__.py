"""Roles whose generations have a fixed length, for benchmarks on seeded weights.

Seeded weights stop at random places, so a benchmark that let them would measure random work.
These subclasses run each generation to the length the registry already bounds it by:

- STT decodes ``max_new_tokens`` per window (end of text never picked);
- translation decodes ``max_decoding_length`` tokens per sentence, and a translation that fills
  the limit is the expected length, not one cut short;
- chat replies run to the request's ``max_tokens`` (end of generation never sampled).

A benchmark's registry names them as a model's ``implementation``; production code never imports
them. One module per role, so that a server process imports only its own role's libraries.
"""

STT = "loadtests.bench.fixed_lengths.stt:FixedLengthSpeechToText"
TRANSLATE = "loadtests.bench.fixed_lengths.translate:FixedLengthTranslator"
CHAT = "loadtests.bench.fixed_lengths.chat:FixedLengthChat"
