"""`interp-assert report` pages and the heatmaps pytest writes for failures (--interp-artifacts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from interp_assert.commands.cli import main
from interp_assert.commands.report import spec_folder_name

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SPEC = """\
model: {model}
prompts:
  words:
    bos: prepend
    texts: ["t5 t6 t7 t8 t9 t10 t11 t12", "t20 t21 t22 t23 t24 t25 t26 t27 t28 t29"]
  repeats:
    bos: prepend
    random_tokens: {{length: 10, repeats: 2, count: 2, seed: 0}}
expectations:
  - name: sink_is_weak
    property: head_score
    head: L0H1
    role: first_token
    prompts: words
    at_most: 0.5
  - name: sink_claim
    description: a false claim, to be marked failed
    property: head_score
    head: L1H2
    role: first_token
    prompts: words
    at_least: 0.99
  - name: induction_top
    property: top_heads
    role: induction
    k: 4
    include: [L0H2]
    prompts: repeats
  - name: norms_fall
    property: hidden_norm_trend
    layers: [0, 2]
    direction: decreasing
    prompts: words
  - name: broad_everywhere
    property: role_fraction
    label: broad
    layers: [0, 1]
    prompts: words
    at_least: 0.5
  - name: peaks_sharp
    description: uniform heads put at most 1/2 on any key (row 1 sees two keys)
    property: attention_stat
    stat: max
    layers: [0, 1]
    prompts: words
    at_least: 0.9
  - name: no_such_head
    property: head_score
    head: LxH0
    role: self
    prompts: words
    at_least: 0.1
"""


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory, uniform_llama: Path) -> Path:
    folder = tmp_path_factory.mktemp("report")
    spec = folder / "uniform.yaml"
    spec.write_text(SPEC.format(model=uniform_llama))
    assert main(["report", str(spec), "-o", str(folder / "out")]) == 1, "the spec has failing expectations"
    return folder / "out"


def test_every_png_is_shown_and_valid(report_dir: Path) -> None:
    page = (report_dir / "index.html").read_text()
    shown = re.findall(r"<img src='([^']+)'", page)
    written = sorted(path.name for path in report_dir.glob("*.png"))
    assert sorted(shown) == written
    for name in written:
        data = (report_dir / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        with Image.open(report_dir / name) as image:
            image.verify()
    # one figure of each kind the spec calls for
    for name in (
        "scores-words-first_token.png",
        "scores-repeats-induction.png",
        "pattern-words-L0H1.png",
        "pattern-words-L1H2.png",
        "pattern-repeats-L0H2.png",
        "norms-words.png",
        "fractions-words.png",
        "attention-words.png",
    ):
        assert name in written


def test_failed_expectations_are_marked(report_dir: Path) -> None:
    page = (report_dir / "index.html").read_text()
    rows = {name: status for status, name in re.findall(r"<tr class='(\w+)' id='exp-([\w.-]+)'>", page)}
    assert rows == {
        "sink_is_weak": "passed",
        "sink_claim": "failed",
        "induction_top": "passed",
        "norms_fall": "failed",
        "broad_everywhere": "passed",
        "peaks_sharp": "failed",
        "no_such_head": "invalid",
    }
    failed_row = re.search(r"<tr class='failed' id='exp-sink_claim'>.*?</tr>", page)
    assert failed_row is not None
    assert "FAILED" in failed_row.group(0) and "expected at_least 0.99" in failed_row.group(0)
    assert "pattern-words-L1H2.png" in failed_row.group(0)  # linked to the figure of its head
    assert "<figure id='fig-pattern-words-L1H2' class='failed'>" in page
    assert "<figure id='fig-pattern-words-L0H1' class='passed'>" in page
    assert "3 failed or invalid" not in page and "4 failed or invalid" in page


def test_report_against_another_checkpoint(
    tmp_path: Path, uniform_llama: Path, random_llama: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "uniform.yaml"
    spec.write_text(SPEC.format(model=uniform_llama))
    assert main(["report", str(spec), "-o", str(tmp_path / "out"), "--model", str(random_llama)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {tmp_path / 'out' / 'index.html'}: ")
    index = tmp_path / "out" / "index.html"
    assert str(random_llama) in index.read_text()

    # the page is the user's: a second report into the same folder needs --force
    before = index.read_text()
    assert main(["report", str(spec), "-o", str(tmp_path / "out")]) == 2
    assert "out is not empty (it holds " in capsys.readouterr().err
    assert index.read_text() == before
    assert main(["report", str(spec), "-o", str(tmp_path / "out"), "--force"]) == 1
    assert index.read_text() != before


def test_report_exits_0_when_everything_holds(tmp_path: Path, uniform_llama: Path) -> None:
    passing = SPEC.split("  - name: ")[0] + "  - name: " + SPEC.split("  - name: ")[1]
    spec = tmp_path / "one.yaml"
    spec.write_text(passing.format(model=uniform_llama))
    assert main(["report", str(spec), "-o", str(tmp_path / "out")]) == 0


# ---- pytest --interp-artifacts ----

FAILING = """\
model: {model}
prompts:
  words:
    bos: prepend
    texts: ["t5 t6 t7 t8 t9 t10 t11"]
expectations:
  - name: sink
    property: head_score
    head: L1H3
    role: first_token
    prompts: words
    at_least: 0.9
  - name: norms
    property: hidden_norm_ratio
    prompts: words
    at_least: 1000
"""


def test_failure_writes_heatmaps_and_names_them(pytester: pytest.Pytester, uniform_llama: Path) -> None:
    spec = pytester.path / "model_specs" / "claims.yaml"
    spec.parent.mkdir()
    spec.write_text(FAILING.format(model=uniform_llama))
    result = pytester.runpytest("model_specs", "--interp-artifacts", "artifacts")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    folder = Path("artifacts") / spec_folder_name(spec)
    assert folder.name.startswith("claims-")
    pattern = folder / "sink-L1H3-pattern.png"
    scores = folder / "sink-first_token-scores.png"
    assert f"  heatmap: {scores}" in out and f"  heatmap: {pattern}" in out
    for path in (pattern, scores):
        assert (pytester.path / path).read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in (pytester.path / folder).iterdir()) == sorted(
        [pattern.name, scores.name]
    )  # a failure with no head or role has no heatmap
    # a later run reuses the folder it made; a folder holding the user's own files is refused
    pytester.runpytest("model_specs", "--interp-artifacts", "artifacts").assert_outcomes(failed=2)
    (pytester.path / "mine").mkdir()
    (pytester.path / "mine" / "notes.png").write_bytes(b"mine")
    refused = pytester.runpytest("model_specs", "--interp-artifacts", "mine")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*--interp-artifacts mine: *mine is not empty (it holds notes.png)*"])
    assert (pytester.path / "mine" / "notes.png").read_bytes() == b"mine"


def test_artifact_folders_are_slugs_unique_per_spec_path() -> None:
    """A stem of ``..`` stays inside the artifacts folder; same-named specs in two folders differ."""
    for stem in ("..", ".", "/etc/x", "a b"):
        name = spec_folder_name(Path("model_specs") / f"{stem}.yaml")
        assert not name.startswith(".") and "/" not in name and " " not in name, name
    assert spec_folder_name("a/model_specs/tiny.yaml") != spec_folder_name("b/model_specs/tiny.yaml")
    assert spec_folder_name("a/model_specs/tiny.yaml").startswith("tiny-")


def test_no_heatmaps_without_the_option(pytester: pytest.Pytester, uniform_llama: Path) -> None:
    spec = pytester.path / "model_specs" / "claims.yaml"
    spec.parent.mkdir()
    spec.write_text(FAILING.format(model=uniform_llama))
    result = pytester.runpytest("model_specs")
    result.assert_outcomes(failed=2)
    assert "heatmap: " not in result.stdout.str()
    assert not (pytester.path / "artifacts").exists()


def test_snapshot_gets_a_figure_of_where_the_fingerprint_moved(
    tmp_path: Path, uniform_llama: Path, random_llama: Path
) -> None:
    from interp_assert.drift import snapshot
    from interp_assert.runner import Runner, RunOptions
    from interp_assert.spec import load_spec

    spec_path = tmp_path / "model_specs" / "snap.yaml"
    spec_path.parent.mkdir()
    spec_path.write_text(
        SPEC.split("expectations:")[0].format(model=uniform_llama)
        + ("expectations:\n  - name: fingerprint\n    property: snapshot\n    prompts: words\n")
    )
    spec = load_spec(spec_path)
    entry = spec.entries[0]
    assert Runner(RunOptions(update_snapshots=True)).evaluate(spec, entry).passed  # recorded on the uniform model
    assert snapshot.read(spec_path, "fingerprint") is not None

    out = tmp_path / "out"
    assert main(["report", str(spec_path), "-o", str(out), "--model", str(random_llama)]) == 1
    page = (out / "index.html").read_text()
    assert (out / "snapshot-fingerprint-drift.png").read_bytes()[:4] == b"\x89PNG"
    deltas = sorted(p.name for p in out.glob("snapshot-fingerprint-*-delta.png"))
    assert len(deltas) == 1 and f"src='{deltas[0]}'" in page


def test_report_into_a_file_is_refused(tmp_path: Path, uniform_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "uniform.yaml"
    spec.write_text(SPEC.format(model=uniform_llama))
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    assert main(["report", str(spec), "-o", str(blocker)]) == 2
    assert "exists and is not a folder; give a folder for the report" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


CAUSAL_SPEC = """\
model: tiny-neo
prompts:
  repeated:
    bos: prepend
    random_tokens: {length: 20, repeats: 3, count: 4, seed: 1}
expectations:
  - name: l0h0_matters
    property: ablation_effect
    heads: [L0H0]
    prompts: repeated
    positions: [21, -1]
    at_least: 5.0
    control: {samples: 2, seed: 0}
  - name: l1h1_matters
    description: "false: L1H1 does little"
    property: ablation_effect
    heads: [L1H1]
    prompts: repeated
    at_least: 1.0
  - name: lens
    property: logit_lens
    prompts: repeated
    kl_non_increasing: [0, 2]
"""


def test_ablation_and_logit_lens_get_their_own_figures(tmp_path: Path) -> None:
    spec = tmp_path / "causal.yaml"
    spec.write_text(CAUSAL_SPEC)
    assert main(["report", str(spec), "-o", str(tmp_path / "out")]) == 1
    page = (tmp_path / "out" / "index.html").read_text()
    for file in ("ablation-l0h0_matters.png", "ablation-l1h1_matters.png", "logit-lens-lens.png"):
        assert (tmp_path / "out" / file).read_bytes().startswith(PNG_SIGNATURE)
        assert f"src='{file}'" in page
    assert "Ablation effect" in page and "Logit lens" in page
    with Image.open(tmp_path / "out" / "ablation-l0h0_matters.png") as image:
        assert image.height < image.width  # one bar per set: the named heads and 2 random ones
