"""The paper's tables as data (vitmemad/paper_results.yaml, vitmemad.paper) and experiments/report.py."""
from __future__ import annotations

import ast
import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from vitmemad import paper
from vitmemad.paper import computed_average, load_paper_results, paper_value, printed_average

REPO = Path(__file__).resolve().parents[1]
YAML_PATH = REPO / "vitmemad" / "paper_results.yaml"


def _load_report():
    spec = importlib.util.spec_from_file_location("vitmemad_report", REPO / "experiments" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load_report()


def _tuple_constant(path: Path, name: str) -> tuple:
    """A module-level tuple constant read from source (importing vitmemad.data would pull in torch)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {path}")


# ----------------------------------------------------------------------------------- transcription


def test_table3_spot_values():
    assert paper_value("table3", "Ours", "bottle", "image_AUROC") == 94.0
    assert paper_value("table3", "Ours", "carpet", "image_AUROC") == 85.0
    assert paper_value("table3", "Ours", "hazelnut", "image_AUROC") == 100.0
    assert paper_value("table3", "Ours", "metal_nut", "image_AUROC") == 89.5
    assert paper_value("table3", "L2-CAE", "bottle", "image_AUROC") == 77.0
    assert paper_value("table3", "MKD", "bottle", "image_AUROC") == 99.4
    assert paper_value(3, "AnoGAN", "screw", "image_AUROC") == 35.0
    # the paper's spellings map to the dataset's folder names
    assert paper_value("Table 3", "Ours", "Huzelnut", "image_AUROC") == 100.0
    assert paper_value("table3", "Ours", "Metal nut", "image_AUROC") == 89.5


def test_table3_printed_and_computed_average():
    assert printed_average("table3", "Ours", "image_AUROC") == 91.2
    assert paper_value("table3", "Ours", None, "image_AUROC") == 91.2
    assert computed_average("table3", "Ours", "image_AUROC") == pytest.approx(91.39, abs=0.01)
    assert computed_average("table3", "Ours", "image_AUROC", ["bottle", "carpet"]) == pytest.approx(89.5)


def test_table4_spot_values_and_nulls():
    assert paper_value("table4", "Ours", "bottle", "pixel_AUROC") == 95.1
    assert paper_value("table4", "Ours", "bottle", "PRO") == 92.1
    assert paper_value("table4", "MKD", "bottle", "pixel_AUROC") is None
    assert paper_value("table4", "MKD", "bottle", "PRO") == 93.1
    assert paper_value("table4", "VT_ADL", "zipper", "pixel_AUROC") is None
    assert paper_value("table4", "AE_SSIM", "transistor", "PRO") == 72.5
    assert printed_average("table4", "MKD", "pixel_AUROC") is None
    assert computed_average("table4", "MKD", "pixel_AUROC") is None
    assert printed_average("table4", "Ours", "PRO") == 92.3


def test_table5_btad_products_are_strings():
    raw = load_paper_results()
    values = raw["table5"]["methods"]["Ours"]["values"]
    assert list(values) == ["01", "02", "03"]
    assert all(isinstance(k, str) for k in values)
    assert raw["table5"]["categories"] == ["01", "02", "03"]
    ours_02 = [paper_value("table5", "Ours", "02", m) for m in ("image_AUROC", "pixel_AUROC", "PRO")]
    assert ours_02 == [85.0, 89.4, 89.0]
    assert paper_value("table5", "Ours", 2, "PRO") == 89.0  # an int product is read as "02"
    assert paper_value("table5", "P-SVDD", "01", "PRO") is None
    assert printed_average("table5", "Ours", "image_AUROC") == 92.2


def test_table6_ablation():
    assert [paper.ablation_value("m_ca", m) for m in paper.METRICS] == [91.2, 93.0, 92.3]
    assert [paper.ablation_value("base", m) for m in paper.METRICS] == [82.2, 83.8, 79.6]
    assert [paper.ablation_value("m", m) for m in paper.METRICS] == [85.7, 91.8, 90.5]
    assert [paper.ablation_value("ca", m) for m in paper.METRICS] == [84.5, 86.4, 85.7]
    assert computed_average("table6", "base", "PRO") is None  # means only
    assert paper.ABLATION_LABELS == {"base": "Base", "m": "Base + M", "ca": "Base + CA", "m_ca": "Base + M + CA"}
    assert list(load_paper_results()["table6"]["methods"]) == list(paper.ABLATIONS)


def test_methods_and_complete_grid():
    raw = load_paper_results()
    assert list(raw["table3"]["methods"]) == ["AE_SSIM", "AnoGAN", "L2-CAE", "VAE", "CAVGA", "AnoViT", "MKD", "Ours"]
    assert list(raw["table4"]["methods"]) == ["AE_SSIM", "AnoGAN", "VAE", "MKD", "SCADN", "VT_ADL", "Ours"]
    assert list(raw["table5"]["methods"]) == ["P-SVDD", "SSPCAB", "DRAEM", "VT-ADL", "Ours"]
    for name in ("table3", "table4", "table5"):
        table = raw[name]
        for method, entry in table["methods"].items():
            assert list(entry["values"]) == list(table["categories"]), (name, method)
            for row in [*entry["values"].values(), entry["printed_average"]]:
                assert set(row) == set(table["metrics"]), (name, method)
                assert all(v is None or (isinstance(v, float) and 0 <= v <= 100) for v in row.values())
            # transcription check: every printed average is within ~1 pp of the mean of the printed values
            for metric in table["metrics"]:
                printed, computed = printed_average(name, method, metric), computed_average(name, method, metric)
                assert (printed is None) == (computed is None), (name, method, metric)
                if printed is not None:
                    assert abs(printed - computed) < 1.1, (name, method, metric, printed, computed)


def test_category_names_match_the_data_package():
    raw = load_paper_results()
    mvtec = _tuple_constant(REPO / "vitmemad" / "data" / "mvtec.py", "MVTEC_CATEGORIES")
    btad = _tuple_constant(REPO / "vitmemad" / "data" / "btad.py", "BTAD_PRODUCTS")
    assert set(paper.PAPER_MVTEC_ORDER) == set(mvtec) and len(paper.PAPER_MVTEC_ORDER) == 15
    assert paper.PAPER_MVTEC_ORDER[:5] == ("carpet", "grid", "leather", "tile", "wood")
    assert tuple(raw["table3"]["categories"]) == paper.PAPER_MVTEC_ORDER == tuple(raw["table4"]["categories"])
    assert paper.PAPER_BTAD_ORDER == btad == ("01", "02", "03")


def test_lookup_errors():
    with pytest.raises(KeyError, match="pixel_AUROC"):
        paper_value("table3", "Ours", "bottle", "pixel_AUROC")
    with pytest.raises(KeyError, match="brick"):
        paper_value("table3", "Ours", "brick", "image_AUROC")
    with pytest.raises(KeyError, match="Nope"):
        paper_value("table3", "Nope", "bottle", "image_AUROC")
    with pytest.raises(KeyError, match="table9"):
        paper_value(9, "Ours", "bottle", "image_AUROC")
    assert paper.paper_ours("demo", "brick", "image_AUROC") is None
    assert paper.paper_ours("mvtec", "bottle", "PRO") == 92.1


def test_load_paper_results_path_and_copy(tmp_path):
    a = load_paper_results()
    a["table3"]["methods"]["Ours"]["values"]["bottle"]["image_AUROC"] = 0.0
    assert paper_value("table3", "Ours", "bottle", "image_AUROC") == 94.0  # callers cannot corrupt the cache
    assert load_paper_results(YAML_PATH)["table6"]["methods"]["m_ca"]["label"] == "Base + M + CA"
    with pytest.raises(FileNotFoundError):
        load_paper_results(tmp_path / "missing.yaml")


def test_paper_module_stays_light():
    code = "import sys, vitmemad.paper; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


# ----------------------------------------------------------------------------------- report.py

ABLATION_IMAGE = {"base": 0.60, "m": 0.70, "ca": 0.65, "m_ca": 0.80}


def _write(root: Path, sub: str, **fields) -> Path:
    record = {
        "image_AUROC": None, "pixel_AUROC": None, "PRO": None, "category": "brick", "dataset": "demo",
        "model": "vitmemad_cpu", "ablation": "m_ca", "seed": 0, "epochs": 2, "train_seconds": 10.0,
        "ckpt_path": "checkpoints/last.ckpt", "per_defect": {}, "num_test_images": 12, "image_size": 64,
        "provenance": {"git_commit": "abc"},
    }
    record.update(fields)
    path = root / sub / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


@pytest.fixture()
def runs(tmp_path) -> Path:
    root = tmp_path / "outputs"
    job = 0
    for ablation, image in ABLATION_IMAGE.items():  # a Hydra multirun: 4 ablations x 2 seeds on demo brick
        for seed in (0, 1):
            _write(root, f"train/multiruns/2024-01-01_00-00-00/{job}", ablation=ablation, seed=seed,
                   image_AUROC=image + 0.1 * seed, pixel_AUROC=image, PRO=None if ablation == "ca" else image - 0.1,
                   per_defect={"crack": image, "stain": image + 0.05 * seed})
            job += 1
    _write(root, "mv/0", dataset="mvtec", category="bottle", model="vitmemad_paper", seed=0,
           image_AUROC=0.90, pixel_AUROC=0.92, PRO=0.85, per_defect={"broken_large": 0.95, "contamination": 0.85})
    _write(root, "mv/1", dataset="mvtec", category="bottle", model="vitmemad_paper", seed=1,
           image_AUROC=0.96, pixel_AUROC=0.94, PRO=0.87, per_defect={"broken_large": 0.97, "contamination": 0.89})
    _write(root, "mv/cae", dataset="mvtec", category="bottle", model="cae", ablation=None, seed=0,
           image_AUROC=0.70, pixel_AUROC=None, PRO=None, train_seconds=None)
    _write(root, "bt/0", dataset="btad", category="02", model="vitmemad_paper", seed=0,
           image_AUROC=0.80, pixel_AUROC=0.90, PRO=0.85)
    return root


def _table_after(md: str, heading_start: str) -> list[list[str]]:
    """Data rows (cells) of the first table after the heading that starts with `heading_start`."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading_start))
    rows, in_table = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            in_table = True
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif in_table:
            break
    return rows[2:]  # drop header and separator


def test_collect_and_csv(runs, tmp_path, capsys):
    (runs / "broken").mkdir()
    (runs / "broken" / "metrics.json").write_text('{"image_AUROC": 0.5')  # truncated
    _write(runs, "partial", dataset="demo").write_text(json.dumps({"category": "brick", "image_AUROC": 0.5}))
    _write(runs, "percent", image_AUROC=93.0)  # percent instead of a fraction

    records = report.collect([runs])
    err = capsys.readouterr().err
    assert len(records) == 12
    assert str(runs / "broken" / "metrics.json") in err
    assert str(runs / "partial" / "metrics.json") in err and "pixel_AUROC" in err
    assert str(runs / "percent" / "metrics.json") in err

    csv_path, md_path = report.write_report(records, tmp_path / "report")
    assert csv_path == tmp_path / "report" / "results.csv" and md_path.is_file()
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == report.CSV_COLUMNS == (
            "dataset", "category", "model", "ablation", "seed", "epochs",
            "image_AUROC", "pixel_AUROC", "PRO", "train_seconds", "path")
        rows = list(reader)
    assert len(rows) == 12
    demo = [r for r in rows if r["dataset"] == "demo"]
    assert sorted((r["ablation"], r["seed"]) for r in demo) == sorted((a, s) for a in ABLATION_IMAGE for s in "01")
    cae = next(r for r in rows if r["model"] == "cae")
    assert cae["ablation"] == "" and cae["pixel_AUROC"] == "" and cae["PRO"] == "" and cae["train_seconds"] == ""
    assert float(cae["image_AUROC"]) == pytest.approx(0.70)
    assert next(r for r in rows if r["dataset"] == "btad")["category"] == "02"
    assert all(Path(r["path"]).name == "metrics.json" for r in rows)


def test_markdown_tables(runs, tmp_path):
    _, md_path = report.write_report(report.collect([runs]), tmp_path)
    md = md_path.read_text()

    # Table 6 style: exactly the four variants, measured mean ± std beside the paper's numbers
    ablation = _table_after(md, "### Ablation (Table 6 style): demo")
    assert [r[0] for r in ablation] == ["Base", "Base + M", "Base + CA", "Base + M + CA"]
    paper6 = {"Base": (82.2, 83.8, 79.6), "Base + M": (85.7, 91.8, 90.5),
              "Base + CA": (84.5, 86.4, 85.7), "Base + M + CA": (91.2, 93.0, 92.3)}
    for row in ablation:
        # Variant | categories | runs | I | paper | Δ | P | paper | Δ | PRO | paper | Δ
        assert (float(row[4]), float(row[7]), float(row[10])) == paper6[row[0]]
        assert row[1] == "1" and row[2] == "2"
    base = ablation[0]
    std = 100 * math.sqrt(((0.6 - 0.65) ** 2 + (0.7 - 0.65) ** 2) / 1)  # sample std over the 2 seeds
    assert base[3] == f"65.0 ± {std:.1f}" == "65.0 ± 7.1"
    assert base[5] == "-17.2"  # 65.0 - 82.2
    assert base[6] == "60.0 ± 0.0" and base[9] == "50.0 ± 0.0"
    ca = ablation[2]
    assert ca[9] == "—" and ca[10] == "85.7" and ca[11] == "—"  # null PRO
    assert "MVTec AD means" in md  # demo runs: the paper's figures are labelled as MVTec means
    gains = _table_after(md, "Gain over Base")
    assert gains[0][:3] == ["Base + M", "+10.0", "+3.5"]

    # Tables 3/4 style for MVTec: bottle row and mean row, 2 seeds
    mvtec = _table_after(md, "### MVTec AD: model `vitmemad_paper`")
    bottle = mvtec[0]
    # Category | runs | epochs | I | paper | Δ | P | paper | Δ | PRO | paper | Δ | train s
    assert bottle[:6] == ["bottle", "2", "2", "93.0 ± 4.2", "94.0", "-1.0"]
    assert bottle[6:12] == ["93.0 ± 1.4", "95.1", "-2.1", "86.0 ± 1.4", "92.1", "-6.1"]
    assert mvtec[1][0].startswith("**mean") and mvtec[1][3:6] == ["93.0 ± 4.2", "94.0", "-1.0"]
    assert "printed average I-AUROC 91.2" in md and "91.39" in md

    # null handling: the cae run without masks
    cae = _table_after(md, "### MVTec AD: model `cae`")[0]
    assert cae[3:6] == ["70.0", "94.0", "-24.0"] and cae[6] == "—" and cae[8] == "—" and cae[9] == "—"
    assert cae[-1] == "—"  # no train_seconds

    # Table 5 style for BTAD
    btad = _table_after(md, "### BTAD: model `vitmemad_paper`")
    assert btad[0][:6] == ["02", "1", "2", "80.0", "85.0", "-5.0"]
    assert btad[0][6:12] == ["90.0", "89.4", "+0.6", "85.0", "89.0", "-4.0"]

    # per-defect image AUROC
    assert "## Image AUROC per defect type" in md
    per_defect_part = md.split("## Image AUROC per defect type")[1]
    rows = _table_after(per_defect_part, "### MVTec AD: model `vitmemad_paper`")
    assert rows == [["bottle", "broken_large", "96.0 ± 1.4", "2"], ["bottle", "contamination", "87.0 ± 2.8", "2"]]
    demo_rows = _table_after(per_defect_part, "### demo: model `vitmemad_cpu`, ablation `base`")
    assert demo_rows == [["brick", "crack", "60.0 ± 0.0", "2"], ["brick", "stain", "62.5 ± 3.5", "2"]]


def test_no_ablation_table_for_a_single_variant(tmp_path):
    for seed in (0, 1):
        _write(tmp_path, f"r{seed}", seed=seed, image_AUROC=0.8, pixel_AUROC=0.8, PRO=0.7)
    _, md_path = report.write_report(report.collect([tmp_path]), tmp_path)
    md = md_path.read_text()
    assert "Ablation (Table 6 style)" not in md
    assert _table_after(md, "### demo: model `vitmemad_cpu`")[0][3] == "80.0 ± 0.0"


def test_main_writes_into_first_dir(runs, tmp_path, capsys):
    assert report.main([str(runs), str(tmp_path / "missing")]) == 0
    captured = capsys.readouterr()
    assert (runs / "results.csv").is_file() and (runs / "results.md").is_file()
    assert str(runs / "results.csv") in captured.out and str(runs / "results.md") in captured.out
    assert "missing" in captured.err
    assert report.main([str(runs), "--out", str(tmp_path / "elsewhere")]) == 0  # rerun: overwrites, no duplicates
    assert len((tmp_path / "elsewhere" / "results.csv").read_text().splitlines()) == 1 + 12


def test_empty_directory_is_an_error(tmp_path, capsys):
    with pytest.raises(report.NoMetricsFound):
        report.collect([tmp_path])
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no metrics.json found" in err and str(tmp_path) in err
    assert not (tmp_path / "results.csv").exists()


def test_all_unreadable_is_an_error(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text("not json")
    assert report.main([str(tmp_path)]) == 1
    assert "could be read" in capsys.readouterr().err


def test_cli_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "report.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no metrics.json found" in proc.stderr


def test_mean_row_std_over_seeds_across_categories(tmp_path):
    # brick: 60 / 80, grass: 70 / 90 (seeds 0 / 1) -> per-seed means 65 / 85 -> 75.0 ± 14.1
    for cat, base in (("brick", 0.6), ("grass", 0.7)):
        for seed in (0, 1):
            _write(tmp_path, f"{cat}{seed}", category=cat, seed=seed, epochs=2 + seed,
                   image_AUROC=base + 0.2 * seed, pixel_AUROC=None, PRO=0.5)
    _, md_path = report.write_report(report.collect([tmp_path]), tmp_path)
    md = md_path.read_text()
    rows = _table_after(md, "### demo: model `vitmemad_cpu`")
    assert [r[0] for r in rows] == ["brick", "grass", "**mean (2 categories)**"]
    assert rows[0][3] == "70.0 ± 14.1" and rows[1][3] == "80.0 ± 14.1"
    assert rows[2][3] == f"75.0 ± {100 * math.sqrt(2 * 0.1 ** 2):.1f}" == "75.0 ± 14.1"
    assert rows[2][4] == "—" and rows[2][5] == "50.0 ± 0.0"
    assert rows[2][2] == "2–3" and "different epoch counts" in md


# ----------------------------------------------------------------------------------- PatchCore reference


def _header_after(md: str, heading_start: str) -> list[str]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading_start))
    header = next(line for line in lines[start + 1:] if line.startswith("|"))
    return [c.strip() for c in header.strip().strip("|").split("|")]


def test_patchcore_is_a_measured_column_beside_the_paper(runs, tmp_path):
    for seed, (i, p, pro) in enumerate([(1.0, 0.978, 0.909), (0.99, 0.976, 0.905)]):
        _write(runs, f"pc/{seed}", dataset="mvtec", category="bottle", model="patchcore", ablation=None, seed=seed,
               epochs=1, image_AUROC=i, pixel_AUROC=p, PRO=pro)
    _write(runs, "pc/cable", dataset="mvtec", category="cable", model="patchcore", ablation=None,
           image_AUROC=0.98, pixel_AUROC=0.97, PRO=0.90)
    _write(runs, "mv/cable", dataset="mvtec", category="grid", model="cae", ablation=None,
           image_AUROC=0.60, pixel_AUROC=0.70, PRO=0.50)
    _, md_path = report.write_report(report.collect([runs]), tmp_path)
    md = md_path.read_text()

    heading = "### MVTec AD: model `vitmemad_paper`"
    assert _header_after(md, heading) == ["Category", "runs", "epochs", "I-AUROC", "paper", "Δ", "PatchCore",
                                          "P-AUROC", "paper", "Δ", "PatchCore", "PRO", "paper", "Δ", "PatchCore",
                                          "train s"]
    bottle, mean = _table_after(md, heading)
    # measured, the paper's "Ours", Δ, then PatchCore's mean ± std over its two bottle runs
    assert bottle[3:7] == ["93.0 ± 4.2", "94.0", "-1.0", "99.5 ± 0.7"]
    assert bottle[7:11] == ["93.0 ± 1.4", "95.1", "-2.1", "97.7 ± 0.1"]
    assert bottle[11:15] == ["86.0 ± 1.4", "92.1", "-6.1", "90.7 ± 0.3"]
    assert mean[6] == "99.5 ± 0.7"  # over the same category (bottle), not PatchCore's cable run
    # a category PatchCore has no run of: a dash, and no mean over a partial cover
    cae = _table_after(md, "### MVTec AD: model `cae`")
    assert [r[0] for r in cae[:2]] == ["grid", "bottle"]
    assert cae[0][6] == "—" and cae[1][6] == "99.5 ± 0.7" and cae[2][6] == "—"
    # PatchCore's own table has no comparison column; other datasets get none either
    assert "PatchCore" not in _header_after(md, "### MVTec AD: model `patchcore`")
    assert _table_after(md, "### MVTec AD: model `patchcore`")[0][:4] == ["bottle", "2", "1", "99.5 ± 0.7"]
    assert "PatchCore" not in _header_after(md, "### BTAD: model `vitmemad_paper`")
    assert "PatchCore" not in _header_after(md, "### Ablation (Table 6 style): demo")


def test_patchcore_row_in_the_ablation_table(runs, tmp_path):
    _write(runs, "pc/demo", model="patchcore", ablation=None, image_AUROC=0.97, pixel_AUROC=0.97, PRO=0.92)
    _, md_path = report.write_report(report.collect([runs]), tmp_path)
    md = md_path.read_text()
    rows = _table_after(md, "### Ablation (Table 6 style): demo")
    assert [r[0] for r in rows] == ["Base", "Base + M", "Base + CA", "Base + M + CA", "PatchCore (measured reference)"]
    assert rows[-1][1:] == ["1", "1", "97.0", "—", "—", "97.0", "—", "—", "92.0", "—", "—"]
    # the demo (no paper numbers) tables get the PatchCore column after each measured metric
    assert _header_after(md, "### demo: model `vitmemad_cpu`, ablation `base`") == [
        "Category", "runs", "epochs", "I-AUROC", "PatchCore", "P-AUROC", "PatchCore", "PRO", "PatchCore", "train s"]
    assert _table_after(md, "### demo: model `vitmemad_cpu`, ablation `base`")[0][3:9] == [
        "65.0 ± 7.1", "97.0", "60.0 ± 0.0", "97.0", "50.0 ± 0.0", "92.0"]


# ----------------------------------------------------------------------------------- debug runs


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_debug_runs_are_left_out_unless_included(runs, tmp_path, capsys):
    _write(runs, "smoke/0", debug="smoke", category="grass", image_AUROC=0.99, pixel_AUROC=0.99, PRO=0.99)
    _write(runs, "smoke/1", debug="smoke", category="grass", seed=1, image_AUROC=0.98, pixel_AUROC=0.9, PRO=0.9)
    _write(runs, "plain", debug=None, category="gravel", image_AUROC=0.5, pixel_AUROC=0.5, PRO=0.5)

    assert report.main([str(runs), "--out", str(tmp_path / "default")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "debug" in line] == [
        "note: left out 2 debug run(s) (debug: smoke); add --include-debug to report them"]
    rows = _csv_rows(tmp_path / "default" / "results.csv")
    assert len(rows) == 13 and {r["category"] for r in rows if r["dataset"] == "demo"} == {"brick", "gravel"}
    md = (tmp_path / "default" / "results.md").read_text()
    assert "grass" not in md and "debug runs" not in md

    assert report.main([str(runs), "--out", str(tmp_path / "all"), "--include-debug"]) == 0
    assert "left out" not in capsys.readouterr().err
    rows = _csv_rows(tmp_path / "all" / "results.csv")
    assert sorted(float(r["image_AUROC"]) for r in rows if r["category"] == "grass") == [0.98, 0.99]
    md = (tmp_path / "all" / "results.md").read_text()
    assert "**2 of these runs are debug runs (smoke)" in md
    grass = next(r for r in _table_after(md, "### demo: model `vitmemad_cpu`, ablation `m_ca`") if r[0] == "grass")
    assert grass[1:4] == ["2", "2", "98.5 ± 0.7"]


def test_only_debug_runs_is_an_error_naming_the_flag(tmp_path, capsys):
    _write(tmp_path, "smoke", debug="smoke", image_AUROC=0.9)
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: all 1 runs under" in err and "--include-debug" in err
    assert not (tmp_path / "results.csv").exists()
    assert report.main([str(tmp_path), "--include-debug"]) == 0
    assert len(_csv_rows(tmp_path / "results.csv")) == 1
