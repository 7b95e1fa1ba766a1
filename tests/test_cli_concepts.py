"""onnxattr/cli_concepts.py: `onnxattr concepts` on the shipped digits CNN; its statistics are the API's
(onnxattr.concepts, checked against zennit-crp in tests/test_concepts.py)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxattr.cli import main
from onnxattr.concepts import concepts
from onnxattr.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATA = str(ROOT / "models" / "digits_cnn.onnx"), str(ROOT / "models" / "digits_sample.npy")
LAYER = "/3/Relu_output_0"


def test_lists_channels_writes_statistics_and_reference_rows(tmp_path, capsys):
    labels = tmp_path / "y.npy"
    np.save(labels, np.arange(8) % 10)
    out, refs = tmp_path / "k.npz", tmp_path / "refs.png"
    assert main(["concepts", MODEL, "--method", "lrp.epsilon_plus_flat", "--layer", LAYER, "--data", DATA,
                 "--labels", str(labels), "--top", "3", "--show", "4", "--batch-size", "3", "-o", str(out),
                 "--references", str(refs)]) == 0
    text = capsys.readouterr().out
    want = concepts(MODEL, "lrp.epsilon_plus_flat", LAYER, np.load(DATA), labels=np.arange(8) % 10, top=3)
    listed = [int(c) for c in np.argsort(-want.relevance_share.mean(0), kind="stable")[:4]]
    rows = [line.split() for line in text.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == listed
    assert rows[0][3] == ",".join(map(str, want.top_relevance[listed[0]]))
    assert "each explained at its label" in text
    got = np.load(out)
    np.testing.assert_allclose(got["relevance"], want.relevance, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(got["top_activation"], want.top_activation)
    assert sorted(k for k in got.files if k.startswith("reference:")) == sorted(f"reference:{c}" for c in listed)
    image = np.asarray(Image.open(refs))
    tile = 128  # an 8 x 8 map upscaled to the grid's minimum tile size, 4 white pixels between tiles
    assert image.shape[:2] == (4 * tile + 3 * 4, 3 * tile + 2 * 4)  # 4 channels' rows of 3 samples each


def test_chosen_channels(tmp_path, capsys):
    out = tmp_path / "k.npz"
    assert main(["concepts", MODEL, "-m", "gradient", "--layer", LAYER, "--data", DATA, "--channel", "3",
                 "--channel", "0", "-o", str(out)]) == 0
    assert sorted(k for k in np.load(out).files if k.startswith("reference:")) == ["reference:0", "reference:3"]


@pytest.mark.parametrize("extra,code,message", [
    (["-o", "k.npy"], 2, "-o must name a .npz file"),
    (["--channel", "1"], 2, "--channel chooses the channels"),
    (["--top", "0"], 2, "--top must be a positive integer"),
    (["--channel", "16", "-o", "k.npz"], 7, "channel 16 is not one of the 16 channels"),
    (["--layer", "nope"], 6, "no tensor 'nope'"),
    (["-m", "occlusion"], 2, "keep: occlusion"),
    (["-o", "same.npz", "--references", "same.npz"], 2, "name the same file"),
    (["-m", "conductance", "--references", "r.png"], 2, "conductance cannot be conditioned"),
])
def test_errors(tmp_path, capsys, monkeypatch, extra, code, message):
    monkeypatch.chdir(tmp_path)
    args = ["concepts", MODEL, "-m", "lrp.epsilon", "--layer", LAYER, "--data", DATA]
    for flag in ("-m", "--layer"):
        if flag in extra:
            i = args.index(flag)
            del args[i:i + 2]
    assert main(args + extra) == code
    captured = capsys.readouterr()
    assert message in captured.err
    assert "most relevant samples" not in captured.out  # refused before the table, not after the run


def test_never_overwrites_the_labels(tmp_path, capsys):
    labels = tmp_path / "y.npy"
    np.save(labels, np.zeros(8, np.int64))
    before = labels.read_bytes()
    assert main(["concepts", MODEL, "-m", "lrp.epsilon", "--layer", LAYER, "--data", DATA, "--labels", str(labels),
                 "--references", str(labels)]) == EXIT_CODES["OutputFileError"]
    assert labels.read_bytes() == before


def test_below_lists_the_lower_concepts_and_saves_them(tmp_path, capsys):
    out = tmp_path / "k.npz"
    assert main(["concepts", MODEL, "-m", "lrp.epsilon_plus_flat", "--layer", LAYER, "--data", DATA, "--show", "2",
                 "--top", "3", "--below", "/1/Relu_output_0", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    want = concepts(MODEL, "lrp.epsilon_plus_flat", LAYER, np.load(DATA), top=3)
    listed = [int(c) for c in np.argsort(-want.relevance_share.mean(0), kind="stable")[:2]]
    got = np.load(out)
    for c in listed:
        np.testing.assert_allclose(got[f"below:{c}"], want.below(c, "/1/Relu_output_0"), rtol=1e-6, atol=1e-9)
    assert "comes from these channels of /1/Relu_output_0" in text


def test_reference_start_output_is_the_conditioned_map_of_the_prediction(tmp_path, capsys):
    out = tmp_path / "k.npz"
    assert main(["concepts", MODEL, "-m", "lrp.epsilon", "--layer", LAYER, "--data", DATA, "--top", "2",
                 "--channel", "4", "--reference-start", "output", "-o", str(out)]) == 0
    want = concepts(MODEL, "lrp.epsilon", LAYER, np.load(DATA), top=2, channels=[4], start="output")
    np.testing.assert_allclose(np.load(out)["reference:4"], want.references[4], atol=1e-7)


def test_images_are_named_in_the_statistics(tmp_path, capsys):
    x = np.load(DATA)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((x[i, 0] / x.max() * 255).astype(np.uint8)).save(folder / f"d{i}.png")
    out = tmp_path / "k.npz"
    assert main(["concepts", MODEL, "-m", "lrp.epsilon", "--layer", LAYER, "--data", str(folder), "--top", "2",
                 "-o", str(out)]) == 0
    assert [Path(f).name for f in np.load(out)["files"]] == ["d0.png", "d1.png", "d2.png"]


def test_a_folder_is_read_a_slice_at_a_time(tmp_path, capsys, monkeypatch):
    """concepts over a folder reads its images as it runs them (--batch-size 2 of 5 images; the reference maps'
    samples by number), never all at once, and gives the statistics and references of the same data as a .npy."""
    from onnxattr.image_files import ImageFiles
    from onnxattr.pixels import load_image

    x = np.load(DATA)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray((x[i, 0] / x.max() * 255).astype(np.uint8)).save(folder / f"d{i}.png")
    np.save(tmp_path / "x.npy", np.concatenate([load_image(str(folder / f"d{i}.png"), ["N", 1, 8, 8])
                                                for i in range(5)]))
    args = ["concepts", MODEL, "-m", "lrp.epsilon", "--layer", LAYER, "--top", "2", "--batch-size", "2", "--channel",
            "1", "--channel", "4"]
    assert main(args + ["--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "want.npz")]) == 0
    reads, getitem = [], ImageFiles.__getitem__
    monkeypatch.setattr(ImageFiles, "__getitem__", lambda self, rows: reads.append(rows) or getitem(self, rows))

    def whole_read(*args, **kwargs):
        raise AssertionError("the folder was read whole")
    monkeypatch.setattr(ImageFiles, "__array__", whole_read)
    assert main(args + ["--data", str(folder), "-o", str(tmp_path / "got.npz")]) == 0
    assert max(len(range(*r.indices(5))) if isinstance(r, slice) else len(r) for r in reads) == 2
    want, got = np.load(tmp_path / "want.npz"), np.load(tmp_path / "got.npz")
    assert sorted(got.files) == sorted(want.files + ["files"])
    for name in want.files:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-9, err_msg=name)
