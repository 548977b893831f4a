"""The quality report's parts that need no stack: chrF against the reference implementation, the
evaluation set and a clip manifest, and how a report reads."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sacrebleu.metrics import CHRF

from milo_voice.quality.chrf import chrf
from milo_voice.quality.eval_set import load_clips, load_eval_set
from milo_voice.quality.evaluation import Report, Row


def _random_corpus(rng: random.Random) -> tuple[list[str], list[str]]:
    words = ["manana", "zo", "hiaina", "ho", "afaka", "ny", "olona", "tsirairay"]
    words += ["tous", "les", "droits", "de", "la", "vie", "à", "être"]
    size = rng.randint(1, 5)
    hypotheses = [" ".join(rng.choices(words, k=rng.randint(0, 9))) for _ in range(size)]
    references = [" ".join(rng.choices(words, k=rng.randint(1, 9))) for _ in range(size)]
    return hypotheses, references


def test_chrf_is_sacrebleus_default_chrf() -> None:
    rng = random.Random(7)
    corpora = [
        (["Tous les êtres humains naissent libres."], ["Tous les êtres humains naissent libres et égaux."]),
        (["a"], ["afaka"]),  # a reference too short for the high orders
        ([""], ["abc"]),
        *(_random_corpus(rng) for _ in range(200)),
    ]
    for hypotheses, references in corpora:
        expected = CHRF().corpus_score(hypotheses, [references]).score
        assert chrf(hypotheses, references) == pytest.approx(expected, abs=1e-9), (hypotheses, references)


def test_chrf_bounds() -> None:
    assert chrf(["Manana zo hiaina"], ["Manana zo hiaina"]) == pytest.approx(100.0)
    assert chrf(["xyz"], ["abc"]) == 0.0
    with pytest.raises(ValueError, match="references"):
        chrf(["a", "b"], ["a"])


def test_the_evaluation_set_pairs_every_article_of_the_declaration() -> None:
    texts = load_eval_set()
    assert len(texts) == 50
    assert {t.id.split(".")[0] for t in texts} == {str(n) for n in range(1, 31)}
    first = texts[0]
    assert first.id == "1.1"
    assert first.fr.startswith("Tous les êtres humains naissent libres et égaux en dignité et en droits.")
    assert first.text("mg").startswith("Teraka afaka sy mitovy zo sy fahamendrehana ny olombelona rehetra.")
    with pytest.raises(ValueError, match="en"):
        first.text("en")


def test_a_clip_manifest_names_files_beside_it(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    manifest = tmp_path / "clips.tsv"
    manifest.write_text("path\tlanguage\ttext\na.wav\tmg\tManao ahoana\n", encoding="utf-8")
    (clip,) = load_clips(manifest)
    assert (clip.path, clip.language, clip.text) == (tmp_path / "a.wav", "mg", "Manao ahoana")
    manifest.write_text("path\tlanguage\ttext\nb.wav\tmg\tManao ahoana\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"clips.tsv:2"):
        load_clips(manifest)
    manifest.write_text("path\tlanguage\ttext\na.wav\tde\tHallo\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"clips.tsv:2: needs"):
        load_clips(manifest)


def test_a_report_reads_as_a_table_and_as_json() -> None:
    report = Report({"status": "ready"}, [Row("translate", "fr->mg", "chrF", 41.237, 50, "model 50")])
    report.rows.append(Row("stt", "mg", "CER", None, 0, "no voice"))
    table = report.to_markdown()
    assert "| translate | fr->mg | chrF | 41.2 | 50 | model 50 |" in table
    assert "| stt | mg | CER | n/a | 0 | no voice |" in table
    assert report.value("translate", "fr->mg", "chrF") == 41.237
    assert '"value": null' in report.to_json()
