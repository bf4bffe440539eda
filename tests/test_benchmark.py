"""``components/benchmark``: a real peer (invisible-watermark's dwtDct) and shipped methods on
a few real photos, the tidy table, the reports and the MLflow run."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import torch
from PIL import Image

from neuralmark.components.benchmark import COLUMNS, BenchmarkSettings, PhotoSet, load_folder
from neuralmark.components.benchmark import peers as peers_mod
from neuralmark.components.benchmark.cards import (
    BEGIN,
    END,
    card_section,
    keep_section,
    read_run,
    replace_section,
    write_card_section,
)
from neuralmark.components.benchmark.entrants import parse_spec, split_names
from neuralmark.components.benchmark.report import (
    headline,
    model_table,
    read_csv,
    settings_command,
    to_html,
    write_csv,
    write_reports,
)
from neuralmark.components.benchmark.runner import run_benchmark
from neuralmark.components.benchmark.sweeps import QUICK_SWEEPS, suite
from neuralmark.components.benchmark.whitebox import NOT_APPLICABLE
from neuralmark.components.errors import InputError
from neuralmark.components.imageio import load_image
from neuralmark.components.methods import WatermarkKey, load_bundle
from neuralmark.components.methods.registry import shipped_bundle

pytest.importorskip("imwatermark", reason="the peers extra: pip install -e '.[peers]'")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATTACKS = ["jpeg", "rotate"]
AF_FAST = "anti_forward[smoothing=false]"  # the shipped scanner's fast rule


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """Three real photos, one unreadable file and one too small for the benchmark size."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    Image.fromarray(data.astronaut()[:40, :60]).save(folder / "tiny.png")
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    return folder


@pytest.fixture(scope="module")
def result(photo_dir, tmp_path_factory):
    """One quick benchmark: shipped/learning-free methods (anti_forward as a config variant),
    a model method named as a content one, dwtDct and a peer whose package is missing
    (rivaGan pointed at a module that does not exist); the model table with trigger_key's
    shipped host through pruning and the keyless noise fine-tuning, and output_mark, which
    ships no host."""
    missing = peers_mod.PeerSpec("rivaGan", "invisible-watermark", ("imwatermark_absent",), 256)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(peers_mod.PEERS, "rivaGan", missing)
        settings = BenchmarkSettings(
            methods=["visible_gan", "spread_spectrum", "trigger_key", AF_FAST],
            peers=["dwtDct", "rivaGan"], attacks=ATTACKS, quick=True, size=256, limit=5,
            fpr_keys=5, batch_sizes=[1], resolutions=[128, 256], whitebox_steps=5,
            model_methods=["trigger_key", "output_mark"],
            model_attacks=["prune", "fine_tune_noise"],
            device="cpu")
        return run_benchmark(settings, load_folder(photo_dir, size=256, limit=5))


def _rows(result, **match):
    return [r for r in result.rows if all(r[k] == v for k, v in match.items())]


def test_suite_is_none_then_each_sweep_and_names_are_checked():
    s = suite(["rotation", "jpeg"], quick=True)
    assert s == [("none", [None]), ("rotate", QUICK_SWEEPS["rotate"]),
                 ("jpeg", QUICK_SWEEPS["jpeg"])]
    with pytest.raises(InputError, match="webp.*no strength sweep"):
        suite(["webp"])
    with pytest.raises(InputError, match="unknown attack 'sharpen'"):
        suite(["sharpen"])


def test_unreadable_and_tiny_photos_are_rows(result):
    skipped = {r["note"].split(":")[0]: r["note"] for r in _rows(result, metric="skipped_image")}
    assert set(skipped) == {"broken.jpg", "tiny.png"}
    assert "60×40" in skipped["tiny.png"] and "256" in skipped["tiny.png"]
    assert result.photos == ["astronaut.png", "chelsea.png", "coffee.png"]


def test_missing_peer_and_model_method_are_rows_not_crashes(result):
    (riva,) = _rows(result, method="rivaGan")
    assert riva["metric"] == "unavailable" and riva["value"] is None
    assert "not installed: invisible-watermark" in riva["note"] and "[peers]" in riva["note"]
    (model,) = _rows(result, method="trigger_key", family="neuralmark")
    assert "model method" in model["note"] and "model table" in model["note"]


def test_every_curve_has_every_strength(result):
    for method in ("visible_gan", "spread_spectrum", "dwtDct"):
        for metric in ("detection_rate", "false_positive_rate"):
            seen = defaultdict(set)
            for r in _rows(result, method=method, metric=metric):
                seen[r["attack"]].add(r["strength"])
            for attack in ATTACKS:
                assert seen[attack] == {float(s) for s in QUICK_SWEEPS[attack]}, (method, attack)
    acc = {r["strength"] for r in _rows(result, method="dwtDct", attack="jpeg",
                                        metric="bit_accuracy")}
    assert acc == {30.0, 60.0, 95.0}


def test_peer_rows_measure_a_real_mark(result):
    (psnr,) = _rows(result, method="dwtDct", metric="psnr")
    assert 30 < psnr["value"] < 50 and psnr["n"] == 3
    (fpr,) = _rows(result, method="dwtDct", metric="fpr_clean")
    assert fpr["n"] == 15 and "95% CI" in fpr["note"]
    (clean_acc,) = _rows(result, method="dwtDct", label="none", metric="bit_accuracy")
    assert clean_acc["value"] > 0.8  # the mark is there before any attack
    small = _rows(result, method="dwtDct", attack="timing_resolution", strength=128.0)
    assert small and all(r["value"] is None and "256 px" in r["note"] for r in small)
    assert _rows(result, method="dwtDct", attack="timing_resolution", strength=256.0,
                 metric="embed_ms")[0]["value"] > 0


def test_forgery_rows_say_how_or_why_not(result):
    (af,) = _rows(result, method="visible_gan", attack="copy", metric="forgery_success_rate")
    assert "attacker's key" in af["note"] and af["n"] == 3  # a keyless stamp
    (ss,) = _rows(result, method="spread_spectrum", attack="copy",
                  metric="forgery_success_rate")
    assert ss["value"] is None and "does not apply" in ss["note"]
    (dd,) = _rows(result, method="dwtDct", attack="copy", metric="forgery_success_rate")
    assert "public decoder" in dd["note"] and 0 <= dd["value"] <= 1
    # issue #17: from up to 10 marked photos, the residual copy applies to every method
    # (spread_spectrum's image-independent pattern included), the mean shift only where a
    # public feature extractor ships
    for method in ("visible_gan", "spread_spectrum", "dwtDct"):
        (residual,) = _rows(result, method=method, attack="residual_copy",
                            metric="forgery_success_rate")
        assert 0 <= residual["value"] <= 1 and "95% CI" in residual["note"]
        (shift,) = _rows(result, method=method, attack="mean_shift",
                         metric="forgery_success_rate")
        assert shift["value"] is None and "no public feature extractor" in shift["note"]
    for method in ("visible_gan", "spread_spectrum", "dwtDct"):
        (removal,) = _rows(result, method=method, metric="removal_success_rate")
        (psnr,) = _rows(result, method=method, metric="psnr")
        assert removal["strength"] == pytest.approx(psnr["value"])


def test_whitebox_removal_breaks_the_public_scanner_within_the_budget(result):
    """APGD on anti_forward's public scanner, within the method's own PSNR: every rate in
    [0, 1], the attacked photos no farther than the budget; visible_gan's shipped remover V
    within the same budget; neither → n/a."""
    (wb,) = _rows(result, method=AF_FAST, metric="whitebox_removal_success_rate")
    (psnr,) = _rows(result, method=AF_FAST, metric="psnr")
    (quality,) = _rows(result, method=AF_FAST, metric="whitebox_removal_psnr")
    assert wb["strength"] == pytest.approx(psnr["value"]) and wb["n"] >= 1
    assert 0 <= wb["value"] <= 1 and "APGD-L2 5 steps on the public scanner" in wb["note"]
    assert quality["value"] >= psnr["value"] - 1e-6
    for method in ("spread_spectrum", "dwtDct"):
        (row,) = _rows(result, method=method, metric="whitebox_removal_success_rate")
        assert row["value"] is None and row["note"] == NOT_APPLICABLE
    # visible_gan ships V, a trained remover: its row runs V within the same budget
    (vg,) = _rows(result, method="visible_gan", metric="whitebox_removal_success_rate")
    (vg_psnr,) = _rows(result, method="visible_gan", metric="psnr")
    (vg_quality,) = _rows(result, method="visible_gan", metric="whitebox_removal_psnr")
    assert 0 <= vg["value"] <= 1 and "public remover V" in vg["note"]
    assert vg_quality["value"] >= vg_psnr["value"] - 1e-6
    heads = {h["method"]: h for h in headline(result.rows)}
    assert heads["dwtDct"]["whitebox_removal"] == NOT_APPLICABLE
    assert heads[AF_FAST]["whitebox_removal"] == wb["value"]


def test_model_table_attacks_the_shipped_host(result):
    """trigger_key's shipped host through the quick pruning sweep and the keyless noise
    fine-tuning (swept when named), verified with the demo key its card states; the
    unattacked host is detected and the table has each strength."""
    table = model_table(result.rows)
    tk = {r["attack"]: r for r in table if r["method"] == "trigger_key"}
    assert list(tk) == ["none", "prune_0.25", "prune_0.5", "fine_tune_noise_0.25"]
    assert tk["none"]["model_detected"] == 1.0 and tk["none"]["task_psnr"] > 25
    assert tk["prune_0.5"]["task_psnr"] < tk["none"]["task_psnr"]
    assert {tk[k]["model_detected"] for k in tk} <= {0.0, 1.0}
    (om,) = [r for r in table if r["method"] == "output_mark"]
    # output_mark ships a protected derain model (issue #19), not a host these attacks act on
    assert om["model_detected"] is None and "hold no host network" in om["note"]
    assert "trigger_key" not in {h["method"] for h in headline(result.rows)
                                 if h["family"] == "model"}


def test_fine_tune_noise_is_swept_only_when_named():
    """The keyless ``fine_tune_noise`` has a sweep (full and quick) that the default model
    suite skips: naming it is accepted, the default suite is the same five attacks."""
    from neuralmark.components.benchmark.models import model_suite

    assert model_suite() == [("prune", [0.1, 0.25, 0.5, 0.75]),
                             ("fine_tune_original", [1.0, 5.0]), ("fine_tune_new", [1.0, 5.0]),
                             ("distill", [1.0]), ("overwrite", [None])]
    assert model_suite(quick=True) == [("prune", [0.25, 0.5]), ("fine_tune_original", [0.25]),
                                       ("fine_tune_new", [0.25])]
    assert model_suite(["fine_tune_noise"]) == [("fine_tune_noise", [1.0, 5.0])]
    assert model_suite(["prune", "Fine_Tune_Noise"], quick=True) == [
        ("prune", [0.25, 0.5]), ("fine_tune_noise", [0.25])]
    with pytest.raises(InputError, match="'overwrite' has no quick sweep; swept: prune, "
                                         ".*fine_tune_noise"):
        model_suite(["overwrite"], quick=True)


def test_model_and_variant_names_are_checked():
    nothing = PhotoSet(torch.empty(0, 3, 256, 256), [])
    with pytest.raises(InputError, match="content method, not a model method"):
        run_benchmark(BenchmarkSettings(methods=[], peers=[], model_methods=["pgd_signer"]),
                      nothing)
    with pytest.raises(InputError, match="unknown model attack 'melt'"):
        run_benchmark(BenchmarkSettings(methods=[], peers=[], model_attacks=["melt"]), nothing)
    with pytest.raises(InputError, match="key\\[field=value"):
        parse_spec("pgd_signer[psnr_target=40")
    assert parse_spec("pgd_signer[psnr_target=40,sync_search=true]") == (
        "pgd_signer", {"psnr_target": 40, "sync_search": True})
    assert split_names("a,b[x=1,y=2],c") == ["a", "b[x=1,y=2]", "c"]


def test_shipped_method_row_matches_its_own_verify_on_the_files(result, photo_dir, tmp_path):
    """Mark the same photos, save them as PNG files, read them back and ``verify``: the
    benchmark's unattacked row says what ``verify`` says on those files."""
    method = load_bundle(shipped_bundle("visible_gan"))
    photos = load_folder(photo_dir, size=256, limit=5)
    key = WatermarkKey(result.settings.key_secret, result.settings.key_message)
    marked = method.embed(photos.images, key)
    for i, img in enumerate(marked):
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
    files = torch.cat([load_image(tmp_path / f"{i}.png").tensor for i in range(len(marked))])
    verdicts = method.verify(files, key)
    (row,) = _rows(result, method="visible_gan", label="none", metric="detection_rate")
    assert row["value"] == pytest.approx(sum(v.detected for v in verdicts) / len(verdicts))
    clean_verdicts = method.verify(photos.images, key)
    (fp,) = _rows(result, method="visible_gan", label="none", metric="false_positive_rate")
    assert fp["value"] == pytest.approx(sum(v.detected for v in clean_verdicts) / 3)


def test_reports_csv_columns_markdown_and_self_contained_html(result, tmp_path):
    paths = write_reports(result, tmp_path / "out")
    assert list(read_csv(paths["csv"])[0]) == list(COLUMNS)
    assert paths["csv"].read_text().splitlines()[0] == ",".join(COLUMNS)
    assert len(read_csv(paths["csv"])) == len(result.rows)
    md = paths["md"].read_text()
    assert "| dwtDct | peer |" in md and "broken.jpg" in md
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == len(ATTACKS) + 1  # one per attack + timing
    assert "src=\"http" not in page
    heads = {h["method"]: h for h in headline(result.rows)}
    assert heads["rivaGan"]["psnr"] is None and "not installed" in heads["rivaGan"]["note"]
    assert "<td>visible_gan</td>" in to_html(result, figs={})
    assert "| trigger_key | prune_0.5 | 0.500 |" in md and "<td>prune_0.25</td>" in page


def test_mlflow_run_holds_metrics_and_reports(result, tmp_path):
    from mlflow.tracking import MlflowClient

    from neuralmark.integrations.benchmark_tracking import record_benchmark
    from tests.isolation import mlflow_store

    paths = write_reports(result, tmp_path / "out")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_store(uri):
        run_id = record_benchmark(result, paths, uri, tmp_path / "artifacts")
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        arts = {a.path for a in client.list_artifacts(run_id, "benchmark")}
    heads = {h["method"]: h for h in headline(result.rows)}
    assert run.data.metrics["dwtDct.psnr"] == pytest.approx(heads["dwtDct"]["psnr"])
    assert "rivaGan.psnr" not in run.data.metrics
    assert run.data.metrics["anti_forward_smoothing_false_.whitebox_removal"] == pytest.approx(
        heads[AF_FAST]["whitebox_removal"])
    assert run.data.metrics["trigger_key.none.model_detected"] == 1.0
    assert run.data.params["quick"] == "True"
    assert run.data.tags["env.torch"] == torch.__version__  # the float path (record_environment)
    assert arts == {"benchmark/benchmark.csv", "benchmark/benchmark.md",
                    "benchmark/benchmark.html", "benchmark/benchmark.json"}


def test_card_section_is_regenerated_from_the_csv_exactly(result, photo_dir, tmp_path):
    """The card's section is ``card_section`` of the CSV, between the markers, every other
    line kept; a changed CSV value shows in the regenerated section; twice = once."""
    paths = write_reports(result, tmp_path / "out", str(photo_dir))
    card = tmp_path / "MODEL_CARD.md"
    before, after = "# a card\n\nhand-written text\n\n", "\n\n## Known limitations\n- kept\n"
    card.write_text(before + BEGIN + "\nstale numbers\n" + END + after)
    write_card_section(card, paths["csv"], "anti_forward")
    rows, run = read_run(paths["csv"])
    section = card_section(rows, "anti_forward", run)
    assert card.read_text() == before + BEGIN + "\n" + section.rstrip() + "\n" + END + after
    assert run["command"].startswith("neuralmark benchmark --images ")
    assert run["command"] in section and "3 photos" in section
    assert f"| {AF_FAST} | jpeg | 30.0 |" in section  # its curve rows, variants included
    assert "| trigger_key | prune_0.5 |" in section  # the model table of the same run
    (af,) = [h for h in headline(rows) if h["method"] == AF_FAST]
    assert f"| {AF_FAST} | neuralmark | {af['psnr']:.1f} |" in section
    once = card.read_text()
    write_card_section(card, paths["csv"], "anti_forward")
    assert card.read_text() == once
    for r in rows:
        if (r["method"], r["metric"]) == (AF_FAST, "psnr"):
            r["value"] = 12.5
    write_csv(rows, paths["csv"])
    write_card_section(card, paths["csv"], "anti_forward")
    assert f"| {AF_FAST} | neuralmark | 12.5 |" in card.read_text()
    assert card.read_text().startswith(before) and card.read_text().endswith(after)
    model_only = card_section([r for r in rows if r["family"] == "model"], "trigger_key", run)
    assert "| method | family | psnr |" not in model_only  # no content entrant: no headline
    assert "| trigger_key | prune_0.5 | 0.500 |" in model_only


def test_settings_without_a_flag_are_stated_in_the_command():
    settings = BenchmarkSettings(methods=["pgd_signer[psnr_target=40]"], peers=[], seed=3,
                                 limit=None).model_dump(mode="json")
    assert settings_command(settings, None) == (
        "neuralmark benchmark --methods 'pgd_signer[psnr_target=40]' --peers none --size 256 "
        "--fpr-keys 200 --whitebox-steps 20  # and, without a flag: seed=3")


def test_card_markers_appended_kept_and_checked():
    assert replace_section("# c\n", "s") == f"# c\n\n{BEGIN}\ns\n{END}\n"
    old = replace_section("# old card\n", "measured")
    assert keep_section(old, "# rewritten card\n") == replace_section("# rewritten card\n",
                                                                       "measured")
    assert keep_section("# no section\n", "# new\n") == "# new\n"
    # what other tools wrote survives a rewrite; the rewriting script's own sections win
    other = "<!-- BEGIN tool a -->\n## A\nold a\n<!-- END tool a -->"
    own = "<!-- BEGIN tool b -->\n## B\nold b\n<!-- END tool b -->\n\n### notes on b\nkept"
    rewritten = keep_section(
        f"# old title\n\n## Training\nold\n\n{old}\n{other}\n{own}\n\n## Hand\nhand text\n",
        "# new title\n\n## Training\nnew\n<!-- BEGIN tool b -->\nnew b\n<!-- END tool b -->\n")
    for kept in ("old a", "new b", "### notes on b\nkept", "## Hand\nhand text", "measured"):
        assert kept in rewritten
    for gone in ("old b", "old title", "old\n"):
        assert gone not in rewritten
    assert rewritten.count("<!-- BEGIN tool a -->") == 1
    with pytest.raises(InputError, match="has no '<!-- END tool a -->'"):
        keep_section("<!-- BEGIN tool a -->\nno end\n", "# new\n")
    with pytest.raises(InputError, match="markers are broken"):
        replace_section(f"{END}\n{BEGIN}\n", "s")
    with pytest.raises(InputError, match="no row of 'pgd_signer'"):
        card_section([{"method": "dwtDct", "family": "peer"}], "pgd_signer", {})


@pytest.mark.parametrize(("script", "argv", "card"), [
    ("benchmark_pgd_signer", ["--budgets", "40", "--quick"], "pgd_signer"),
    ("benchmark_anti_forward", ["--smoothing-n", "1000", "--no-card"], None),
])
def test_card_scripts_are_the_benchmark_with_config_variants(script, argv, card):
    """The per-method scripts only build a ``neuralmark benchmark`` command; every method
    they name is the shipped bundle with a valid config change."""
    from neuralmark.components.benchmark.entrants import method_entrant
    from tests.script_modules import load_script

    args = load_script(script).command(argv)
    assert args[0] == "benchmark" and ("--card" in args) == (card is not None)
    if card:
        assert args[args.index("--card") + 1] == card
    methods = split_names(args[args.index("--methods") + 1])
    for name in methods:
        entrant = method_entrant(name)
        assert entrant.method is not None and entrant.name == name
        for field, value in parse_spec(name)[1].items():
            assert getattr(entrant.method.config, field) == value
    with pytest.raises(InputError, match="invalid pgd_signer setting"):
        method_entrant("pgd_signer[psnr_targett=40]")
