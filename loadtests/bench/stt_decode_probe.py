"""Whisper decoding at batch 1 in CTranslate2, in a process set up four ways (GPU machine only).

The large-v3 shape decodes one request in 280 to 365 ms on the lent H100s, where the reference
measured 244 ms; at batch 1 decoding is bound by the CPU thread that launches the kernels, so
what else the process holds may matter. Each case runs in its own process:

  ct2         CTranslate2 alone (torch never imported)
  torch       after torch has initialised CUDA and run a kernel
  role        inside the STT role with the torch encoder, as a served instance is
  role-1t     the same with torch limited to one CPU thread

    python -m loadtests.bench.stt_decode_probe MODEL_DIR [--case CASE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CASES = ("ct2", "torch", "role", "role-1t")
TOKENS = 32
COMPUTE = {"cuda": "float16", "cpu": "float32"}


def measure(model_dir: str, case: str, device: str = "cuda", repeats: int = 15) -> dict[str, float]:
    import ctranslate2
    import numpy as np

    if case != "ct2":
        import torch

        if case == "role-1t":
            torch.set_num_threads(1)
        torch.ones(1, device=device).add_(1)
        if device == "cuda":
            torch.cuda.synchronize()
    if case.startswith("role"):
        from loadtests.bench.fixed_lengths.stt import FixedLengthSpeechToText
        from milo_voice.roles.stt import SttOptions

        options = SttOptions(compute_type=COMPUTE[device], max_new_tokens=TOKENS, timestamps=False, encoder="torch")
        stt = FixedLengthSpeechToText(model_dir, device=device, options=options)
        model = stt.model
    else:
        model = ctranslate2.models.Whisper(model_dir, device=device, compute_type=COMPUTE[device])
    n_mels = model.n_mels
    features = ctranslate2.StorageView.from_array(
        np.random.default_rng(0).standard_normal((1, n_mels, 3000)).astype(np.float32)
    )
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    names = ("<|startoftranscript|>", "<|fr|>", "<|transcribe|>", "<|notimestamps|>")
    prompt = [[tokenizer.token_to_id(name) for name in names]]
    end_of_text = tokenizer.token_to_id("<|endoftext|>")
    encoded = model.encode(features, to_cpu=False)

    def decode() -> None:
        model.generate(encoded, prompt, beam_size=1, max_length=2 * TOKENS, suppress_tokens=[-1, end_of_text])

    def median_ms(function: object, runs: int) -> float:
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            function()  # type: ignore[operator]
            samples.append((time.perf_counter() - started) * 1000)
        return round(statistics.median(samples), 1)

    for _ in range(3):
        decode()
    result = {"decode_ms": median_ms(decode, repeats)}
    if case.startswith("role"):
        from contract.records import SttRequest

        audio = np.random.default_rng(1).standard_normal(16000 * 8).astype(np.float32) * 0.1
        request = [SttRequest(audio, "fr")]
        stt.transcribe_batch(request)
        result["role_ms"] = median_ms(lambda: stt.transcribe_batch(request), repeats)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", nargs="+")
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of the probe itself")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(measure(args.model_dirs[0], args.case, args.device)))
        return 0
    results: dict[str, dict[str, object]] = {}
    for model_dir in args.model_dirs:
        for case in CASES:
            command = [sys.executable, "-m", "loadtests.bench.stt_decode_probe", model_dir, "--case", case]
            run = subprocess.run([*command, "--device", args.device], capture_output=True, text=True, check=False)
            lines = run.stdout.strip().splitlines()
            results.setdefault(model_dir, {})[case] = (
                json.loads(lines[-1]) if run.returncode == 0 and lines else {"error": run.stderr[-500:]}
            )
            print(model_dir, case, results[model_dir][case], flush=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
