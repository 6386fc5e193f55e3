"""Bad input at the command line: exit status 2 and one line `error: <message>` naming the path or key.

Most cases run the entry point in this process (`run_cli`: the module is executed as ``__main__``
exactly as ``python -m`` does, minus the interpreter start-up); one case runs a real subprocess
to check what a user sees, byte for byte, and that the traceback went to the run's log file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fixtures_data import make_mvtec, write_image
from helpers import TINY_DEMO, CliResult, run_cli, run_module
from vitmemad import cli
from vitmemad.data import DatasetError


def assert_one_line_error(result: CliResult, *fragments: object) -> str:
    assert result.code == cli.EXIT_USER_ERROR, (result.code, result.stderr[-3000:])
    line = result.last_line
    assert line.startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert str(fragment) in line, (fragment, line)
    assert "Traceback" not in result.stderr + result.stdout
    return line


def train_mvtec(root: Path, run_dir: Path, *extra: str) -> CliResult:
    return run_cli("vitmemad.train", "data=mvtec", f"data.root={root}", "data.category=widget", "debug=smoke",
                   "num_threads=1", f"hydra.run.dir={run_dir}", *extra)


# ----------------------------------------------------------------------------- a real subprocess
def test_missing_dataset_root_real_cli(tmp_path):
    missing, run_dir = tmp_path / "no_such_root", tmp_path / "run"
    proc = run_module("vitmemad.train", "data=mvtec", f"data.root={missing}", "debug=smoke",
                      f"hydra.run.dir={run_dir}", check=False)
    result = CliResult(proc.returncode, proc.stdout, proc.stderr)
    line = assert_one_line_error(result, missing, "root folder not found", "Expected layout")
    assert "\n" not in line
    log_text = (run_dir / "train.log").read_text()  # the traceback is kept in the run's log
    assert f"error: {line[len('error: '):]}" in log_text and "Traceback" in log_text


# ----------------------------------------------------------------------------- data
def test_unknown_category_lists_the_valid_ones(tmp_path):
    root = make_mvtec(tmp_path / "data")
    result = run_cli("vitmemad.train", "data=mvtec", f"data.root={root}", "data.category=nope", "debug=smoke",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, "'nope'", root / "nope", "['widget']", "bottle", "metal_nut")


def test_unknown_demo_category_through_hydra_instantiate(tmp_path):
    result = run_cli("vitmemad.train", "data.category=marble", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, "'marble'", "data.category", "['brick', 'grass', 'gravel']")


def test_test_image_without_mask(tmp_path):
    root = make_mvtec(tmp_path / "data")
    mask = root / "widget" / "ground_truth" / "crack" / "001_mask.png"
    mask.unlink()
    result = train_mvtec(root, tmp_path / "run")
    assert_one_line_error(result, "No ground-truth mask", root / "widget" / "test" / "crack" / "001.png", mask)


def test_mask_of_another_size(tmp_path):
    root = make_mvtec(tmp_path / "data")
    mask = root / "widget" / "ground_truth" / "hole" / "000_mask.png"
    write_image(mask, np.zeros((20, 24), np.uint8))
    result = train_mvtec(root, tmp_path / "run")
    assert_one_line_error(result, mask, "24x20", root / "widget" / "test" / "hole" / "000.png", "48x40")


@pytest.mark.parametrize("where", ["train/good/003.png", "test/good/001.png", "ground_truth/crack/000_mask.png"])
def test_truncated_image(tmp_path, where):
    """A half-copied file fails at setup, before any training, wherever it is."""
    root = make_mvtec(tmp_path / "data")
    path = root / "widget" / where
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = train_mvtec(root, tmp_path / "run")
    assert_one_line_error(result, "Cannot read image", path)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training


def test_corrupt_image_bytes(tmp_path):
    root = make_mvtec(tmp_path / "data")
    path = root / "widget" / "train" / "good" / "004.png"
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # zeroed block: the PNG CRC no longer matches
    path.write_bytes(bytes(data))
    assert_one_line_error(train_mvtec(root, tmp_path / "run"), "Cannot read image", path)


def test_format_pil_cannot_read(tmp_path):
    root = make_mvtec(tmp_path / "data")
    path = root / "widget" / "test" / "good" / "002.png"
    path.write_bytes(b"%PDF-1.4\n% not an image, whatever the suffix says\n" * 20)
    assert_one_line_error(train_mvtec(root, tmp_path / "run"), "Cannot read image", path, "cannot identify")


def test_empty_train_folder(tmp_path):
    root = make_mvtec(tmp_path / "data")
    train_dir = root / "widget" / "train" / "good"
    for p in train_dir.iterdir():
        p.unlink()
    assert_one_line_error(train_mvtec(root, tmp_path / "run"), train_dir, "contains no images")


def test_data_errors_are_dataset_errors(tmp_path):
    """The CLI handles them because they are DatasetError (a ValueError), not by matching text."""
    from vitmemad.data import MVTecDataModule

    with pytest.raises(DatasetError):
        MVTecDataModule(root=tmp_path / "none", category="widget", image_size=16, batch_size=2).setup()
    assert cli.user_error(DatasetError("x")) is not None and cli.user_error(KeyError("x")) is None


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "override, fragments",
    [
        ("foo.bar=1", ["foo.bar", "+foo.bar=1"]),  # unknown key: Hydra's message, on one line
        ("model=nonexistent", ["model/nonexistent", "cae", "vitmemad_cpu", "vitmemad_paper"]),  # unknown group option
        ("model.memory.addressing=bogus", ["memory.addressing", "'bogus'", "cosine", "dot"]),  # unknown value
        ("anomaly_map.source=bogus", ["anomaly_map.source", "'bogus'"]),
        ("trainer.max_epochs=[", ["trainer.max_epochs=["]),  # an override that does not parse
    ],
)
def test_config_errors(tmp_path, override, fragments):
    result = run_cli("vitmemad.train", *TINY_DEMO, override, f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, *fragments)


def test_eval_without_checkpoint_path(tmp_path):
    assert_one_line_error(run_cli("vitmemad.eval", f"hydra.run.dir={tmp_path / 'run'}"), "ckpt_path")


@pytest.mark.parametrize("module", ["vitmemad.eval", "vitmemad.predict", "vitmemad.export"])
def test_every_entry_point_reports_a_missing_checkpoint(tmp_path, module):
    missing = tmp_path / "missing.ckpt"
    image = write_image(tmp_path / "in" / "a.png", np.zeros((8, 8), np.uint8))
    extra = {"vitmemad.predict": [f"input={image}", f"output={tmp_path / 'out'}"]}.get(module, [])
    result = run_cli(module, f"ckpt_path={missing}", *extra, f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(result, missing)


def test_traceback_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(Exception, match="marble"):  # Hydra's InstantiationException around the DatasetError
        run_cli("vitmemad.train", "data.category=marble", f"hydra.run.dir={tmp_path / 'run'}")


def test_bugs_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def buggy_main():
        assert os.environ["HYDRA_FULL_ERROR"] == "1"  # so that Hydra re-raises to cli.run
        raise KeyError("a bug, not a user error")

    with pytest.raises(KeyError):
        cli.run(buggy_main)
    assert "HYDRA_FULL_ERROR" not in os.environ  # restored


# ----------------------------------------------------------------------------- one_line
def test_one_line_messages():
    worker = DatasetError(
        "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise DatasetError(msg)\n'
        "vitmemad.data.errors.DatasetError: Cannot read image /data/a.png: OSError: truncated"
    )
    assert cli.one_line(worker) == "Cannot read image /data/a.png: OSError: truncated"
    assert cli.one_line(ValueError("first line\n\n  second line")) == "first line; second line"
    assert cli.one_line(OSError(28, "No space left on device", "/x/y.ckpt")) == \
        "[Errno 28] No space left on device: '/x/y.ckpt'"
    assert cli.one_line(ValueError("")) == "ValueError"
