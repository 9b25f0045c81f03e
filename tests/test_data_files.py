"""Image folders and ``.npz`` arrays: the readers, their options, the CLI and its errors.

Issue #14, section 1. Image folders of PNGs (a few classes, a few hundred small images)
are written with Pillow into ``tmp_path``; each class has its own colour, so a
decoded image tells which class folder it came from. ``.npz`` files are written with
``np.savez`` (stored, memory-mapped when streamed) and ``np.savez_compressed``. The
command-line runs prune a registry model pretrained on the folder; the errors are met
as a user meets them: ``rlprune`` exits with code 2 and one line.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rlprune import cli, data, train
from rlprune.data import DataError, DatasetSplit, Split

#: Each class's colour (RGB); an image is its colour plus noise.
COLOURS = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40]])


def write_images(folder: Path, classes: list[str], per_class: int,
                 size: tuple[int, int] = (12, 10), mode: str = "RGB", seed: int = 0,
                 colours: list[int] | None = None) -> None:
    """``folder/CLASS/IMG.png``: ``per_class`` images of ``size`` (w, h) per class, the
    i-th class in colour ``colours[i]`` (default: ``i``)."""
    rng = np.random.default_rng(seed)
    for i, name in enumerate(classes):
        c = colours[i] if colours is not None else i
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = size
            px = np.clip(COLOURS[c] + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(px, "RGB")
            (img.convert("L") if mode == "L" else img).save(folder / name / f"{i:03d}.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of 80 RGB 12x10 PNGs, no test folder (240 images)."""
    root = tmp_path_factory.mktemp("images") / "shapes"
    write_images(root, ["cat", "dog", "eel"], 80)
    return root


def rows(x: torch.Tensor) -> list[bytes]:
    """Each sample's values (rounded) as bytes, sorted: a split's content as a set."""
    a = np.round(x.reshape(len(x), -1).numpy(), 4)
    return sorted(r.tobytes() for r in a)


def everything(split: Split | DatasetSplit) -> tuple[torch.Tensor, torch.Tensor]:
    return split.take(len(split))


def colour_class(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The class each image's colour says (the brightest channel; 3 for yellow)."""
    px = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    m = px.mean(dim=(2, 3))
    yellow = (m[:, 0] > 0.5) & (m[:, 1] > 0.5)
    return torch.where(yellow, torch.tensor(3), m.argmax(1))


# ------------------------------------------------------------------------ folders
def test_a_folder_in_memory_and_streamed_holds_the_same_images(folder: Path) -> None:
    mem = data.load(f"folder:{folder}?stream=no")
    st = data.load(f"folder:{folder}?stream=yes")
    assert isinstance(mem.train, Split) and isinstance(st.train, DatasetSplit)
    assert not mem.streamed and st.streamed
    assert mem.name == st.name and mem.name.startswith("shapes-")
    assert mem.num_classes == st.num_classes == 3
    assert mem.input_shape == st.input_shape == (3, 10, 12)
    assert mem.mean == pytest.approx(st.mean) and mem.std == pytest.approx(st.std)
    assert mem.meta["classes"] == ["cat", "dog", "eel"]
    assert len(mem.test) == len(st.test) == 48  # 20% of 240, fixed
    assert len(mem.reward) == len(st.reward) == round(0.1 * 192)
    for a, b in ((mem.test, st.test), (mem.train, st.train), (mem.reward, st.reward)):
        xa, ya = everything(a)
        xb, yb = everything(b)
        assert rows(xa) == rows(xb)
        assert sorted(ya.tolist()) == sorted(yb.tolist())
    # every label is the class folder the image came from
    for split in (mem, st):
        x, y = everything(split.train)
        assert torch.equal(colour_class(x, split.mean, split.std), y)
    # normalised with the training images' statistics
    x, _ = everything(mem.train)
    xr, _ = everything(mem.reward)
    full = torch.cat([x, xr])
    assert full.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (full.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_prefixes_of_a_folder_split_hold_every_class(folder: Path) -> None:
    """Folders are sorted by class; racing scores prefixes of the reward split."""
    for stream in ("no", "yes"):
        s = data.load(f"folder:{folder}?stream={stream}", reward_fraction=0.3)
        _, y = s.reward.take(len(s.reward) // 4)
        assert set(y.tolist()) == {0, 1, 2}
        _, y = s.train.take(40)
        assert set(y.tolist()) == {0, 1, 2}


def test_the_test_split_is_fixed_and_never_moves_with_the_seed(folder: Path) -> None:
    a = data.load(f"folder:{folder}", seed=0)
    b = data.load(f"folder:{folder}", seed=1)
    assert rows(everything(a.test)[0]) == rows(everything(b.test)[0])
    assert rows(everything(a.reward)[0]) != rows(everything(b.reward)[0])
    none = data.load(f"folder:{folder}?test_fraction=0")
    assert len(none.test) == 0 and len(none.train) + len(none.reward) == 240
    assert len(data.load(f"folder:{folder}?test_fraction=0.5").test) == 120


@pytest.mark.parametrize("layout", ["test", "val", "train+test"])
def test_a_test_or_val_subfolder_is_the_test_split(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "pets"
    train_root = root / "train" if layout == "train+test" else root
    write_images(train_root, ["a", "b", "c"], 30)
    test_name = "val" if layout == "val" else "test"
    write_images(root / test_name, ["b", "c"], 7, seed=1, colours=[1, 2])  # some classes
    for stream in ("no", "yes"):
        s = data.load(f"folder:{root}?stream={stream}")
        assert s.num_classes == 3 and len(s.test) == 14
        assert len(s.train) + len(s.reward) == 90
        x, y = everything(s.test)
        assert sorted(set(y.tolist())) == [1, 2]  # mapped by name, not by position
        assert torch.equal(colour_class(x, s.mean, s.std), y)


def test_size_crop_channels_mean_and_std(tmp_path: Path, folder: Path) -> None:
    assert data.load(f"folder:{folder}?size=8").input_shape == (3, 8, 8)
    assert data.load(f"folder:{folder}?size=16&crop=12").input_shape == (3, 12, 12)
    assert data.load(f"folder:{folder}?crop=9&stream=yes").input_shape == (3, 9, 9)
    assert data.load(f"folder:{folder}?channels=1").input_shape == (1, 10, 12)
    grey = tmp_path / "grey"
    write_images(grey, ["a", "b"], 20, mode="L")
    assert data.load(f"folder:{grey}").input_shape == (1, 10, 12)
    assert data.load(f"folder:{grey}?channels=3").input_shape == (3, 10, 12)
    # given statistics are applied exactly: (pixel / 255 - mean) / std
    s = data.load(f"folder:{folder}?mean=0.5,0.4,0.3&std=0.2,0.25,0.5&test_fraction=0",
                  stream=True)
    assert s.mean == (0.5, 0.4, 0.3) and s.std == (0.2, 0.25, 0.5)
    assert isinstance(s.train, DatasetSplit)
    i = int(s.train.indices[0])
    path = s.train.dataset.files[i]  # type: ignore[attr-defined]
    px = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255).permute(2, 0, 1)
    want = (px - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) / torch.tensor(
        [0.2, 0.25, 0.5]).view(3, 1, 1)
    assert torch.allclose(s.train.take(1)[0][0], want, atol=1e-6)
    # one value serves every channel; the same options through keyword arguments
    one = data.load(f"folder:{folder}", mean=[0.5], std=[0.25])
    assert one.mean == (0.5, 0.5, 0.5) and one.std == (0.25, 0.25, 0.25)


def test_images_of_different_sizes_need_a_size(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    write_images(root, ["a"], 5, size=(12, 10))
    write_images(root, ["b"], 5, size=(16, 9))
    with pytest.raises(DataError, match=r"images differ in size .*give size=N"):
        data.load(f"folder:{root}")
    s = data.load(f"folder:{root}?size=9")
    assert s.input_shape == (3, 9, 9) and len(everything(s.train)[0]) == len(s.train)


def break_one_image(root: Path, how: str) -> Path:
    victim = sorted((root / "dog").glob("*.png"))[3]
    if how == "garbage":
        victim.write_bytes(b"this is not a png at all")
    else:  # a valid header, the pixels cut short
        victim.write_bytes(victim.read_bytes()[:60])
    return victim


@pytest.mark.parametrize("how", ["garbage", "truncated"])
@pytest.mark.parametrize("stream", ["no", "yes"])
def test_an_unreadable_image_is_named(tmp_path: Path, how: str, stream: str) -> None:
    root = tmp_path / "broken"
    write_images(root, ["cat", "dog"], 20)
    victim = break_one_image(root, how)
    with pytest.raises(DataError, match=f"cannot read image {victim}"):
        s = data.load(f"folder:{root}?stream={stream}&test_fraction=0")
        for split in (s.train, s.reward):
            list(split.batches(16))


@pytest.mark.parametrize(
    ("make", "spec", "fragment"),
    [
        (lambda r: None, "folder:{r}/nowhere", "image folder not found"),
        (lambda r: (r / "f.png").write_bytes(b"x"), "folder:{r}/f.png", "is a file, not an image"),
        (lambda r: write_images(r, [], 0) or (r / "a.png").write_bytes(b"x"), "folder:{r}",
         "has no class subfolders (1 images lie directly in it)"),
        (lambda r: (r / "cat").mkdir(), "folder:{r}", "class folder {r}/cat holds no images"),
        (lambda r: write_images(r, ["a"], 3), "folder:{r}?sise=3", "unknown option 'sise'"),
        (lambda r: write_images(r, ["a"], 3), "folder:{r}?size=big", "bad value 'big' for size"),
        (lambda r: write_images(r, ["a"], 3), "folder:{r}?size=8&crop=9", "crop (9) must be at"),
        (lambda r: write_images(r, ["a"], 3), "folder:{r}?mean=0.5,0.5", "mean has 2 values"),
        (lambda r: write_images(r, ["a"], 3), "folder:{r}?std=0", "std must be > 0"),
        (lambda r: write_images(r, ["a"], 1), "folder:{r}", "1 images are too few"),
        (lambda r: write_images(r, ["a"], 3) or write_images(r / "test", ["zebra"], 1),
         "folder:{r}", "has classes the training images do not: zebra"),
    ],
    ids=["missing", "a-file", "no-class-folders", "empty-class", "unknown-option", "bad-value",
         "crop-above-size", "mean-length", "zero-std", "too-few-images", "unknown-test-class"],
)
def test_folder_mistakes_are_one_clear_error(tmp_path: Path, make, spec: str,
                                             fragment: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    with pytest.raises(DataError) as err:
        data.load(spec.format(r=root))
    assert fragment.format(r=root) in str(err.value)


def test_a_relative_folder_is_found_under_the_data_root(folder: Path) -> None:
    s = data.load(f"folder:{folder.name}", root=folder.parent)
    assert s.num_classes == 3


# ---------------------------------------------------------------------------- npz
def arrays(n: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n, 3, 6, 6), dtype=np.uint8),
            "y_train": rng.integers(0, 5, n), "x_test": rng.integers(0, 256, (40, 3, 6, 6),
                                                                      dtype=np.uint8),
            "y_test": rng.integers(0, 5, 40)}


def test_npz_in_memory_is_from_tensors(tmp_path: Path) -> None:
    a = arrays()
    np.savez(tmp_path / "d.npz", **a)
    s = data.load(f"npz:{tmp_path / 'd.npz'}", seed=3)
    ref = data.from_tensors(a["x_train"] / 255.0, a["y_train"], a["x_test"] / 255.0,
                            a["y_test"], seed=3)
    assert isinstance(s.train, Split) and isinstance(ref.train, Split)
    assert isinstance(s.reward, Split) and isinstance(ref.reward, Split)
    assert torch.allclose(s.train.x, ref.train.x) and torch.equal(s.reward.y, ref.reward.y)
    assert s.num_classes == 5 and s.input_shape == (3, 6, 6) and s.name.startswith("d-")


@pytest.mark.parametrize("saver", [np.savez, np.savez_compressed], ids=["stored", "compressed"])
def test_npz_streamed_and_in_memory_agree(tmp_path: Path, saver) -> None:
    a = arrays()
    path = tmp_path / "d.npz"
    saver(path, **a)
    mem = data.load(f"npz:{path}?mean=0.5&std=0.25&stream=no")
    if saver is np.savez_compressed:
        with pytest.raises(DataError, match="compressed.*cannot be streamed"):
            data.load(f"npz:{path}?stream=yes")
        assert not data.load(f"npz:{path}").streamed
        return
    st = data.load(f"npz:{path}?mean=0.5&std=0.25&stream=yes")
    assert isinstance(st.train, DatasetSplit) and st.streamed
    assert type(st.train.dataset.x).__name__ == "_FileArray"  # type: ignore[attr-defined]
    for m, s in ((mem.train, st.train), (mem.reward, st.reward), (mem.test, st.test)):
        assert rows(everything(m)[0]) == rows(everything(s)[0])
    x, _ = everything(mem.test)
    assert torch.allclose(x, (torch.from_numpy(a["x_test"]).float() / 255 - 0.5) / 0.25, atol=1e-6)
    assert mem.name == st.name


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda a: a.pop("y_test"), "lacks y_test: it holds x_test, x_train, y_train"),
        (lambda a: a.update(y_train=a["y_train"][:-1]),
         "x_train in {p} has 300 rows but y_train has 299"),
        (lambda a: a.update(y_train=np.stack([a["y_train"]] * 2, 1)),
         "y_train in {p} has shape (300, 2)"),
        (lambda a: a.update(x_train=np.arange(300)), "x_train in {p} has shape (300,)"),
        (lambda a: a.update(x_test=a["x_test"][:, :2]), "x_test (2, 6, 6): they must be the same"),
        (lambda a: a.update(y_test=a["y_test"] - 3), "y_test in {p} holds label -3, out of range"),
        (lambda a: a.update(y_train=a["y_train"] + 0.5), "must hold whole class indices"),
        (lambda a: a.update(x_train=a["x_train"][:1], y_train=a["y_train"][:1]),
         "1 training samples are too few"),
    ],
    ids=["missing-key", "row-count", "labels-2d", "inputs-1d", "test-shape", "negative-label",
         "float-labels", "too-few-samples"],
)
def test_npz_mistakes_are_one_clear_error(tmp_path: Path, change, fragment: str) -> None:
    a = arrays()
    change(a)
    p = tmp_path / "d.npz"
    np.savez(p, **a)
    with pytest.raises(ValueError) as err:
        data.load(f"npz:{p}")
    assert fragment.format(p=p) in str(err.value)


def test_npz_labels_above_the_stated_classes(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", **arrays())
    with pytest.raises(DataError, match="holds label 4, out of range: classes=3"):
        data.load(f"npz:{tmp_path / 'd.npz'}?classes=3")
    assert data.load(f"npz:{tmp_path / 'd.npz'}?classes=7").num_classes == 7


def test_files_that_are_no_npz(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read .* as .npz"):
        data.load(f"npz:{tmp_path / 'x.npz'}")
    with pytest.raises(DataError, match=".npz file not found"):
        data.load(f"npz:{tmp_path / 'none.npz'}")


# --------------------------------------------------------------------------- the CLI
def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RLPRUNE_DEBUG", raising=False)
    monkeypatch.setenv("RLPRUNE_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("stream", ["no", "yes"])
def test_rlprune_prune_on_an_image_folder(tmp_path: Path, folder: Path, stream: str) -> None:
    out = tmp_path / "run"
    spec = f"folder:{folder}?stream={stream}"
    extra = [] if stream == "yes" else ["--no-onnx", "--no-plots"]
    rc, stdout, err = run_cli(["prune", "--model", "digits_cnn", "--pretrain-epochs", "3",
                               "--data", spec, "--budget", "params<=0.5", "--method", "cpl",
                               "--episodes", "3", "--finetune-epochs", "1", "--out", str(out),
                               "--quiet", *extra])
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["feasible"] and report["costs"]["params"]["ok"], report["costs"]
    assert report["data"].startswith("shapes-")
    assert (out / "pruned.pt").is_file()
    assert len((out / "log.jsonl").read_text().splitlines()) >= 3
    model = train.load_checkpoint(out / "pruned.pt")[0]
    splits = data.load(spec)
    assert train.evaluate(model, splits.test) > 0.9  # colours are easy
    if stream == "yes":
        assert (out / "pruned.onnx").is_file()


def test_pretrain_and_eval_on_an_image_folder(tmp_path: Path, folder: Path) -> None:
    ck = tmp_path / "ck.pt"
    spec = f"folder:{folder}?size=8"
    rc, stdout, err = run_cli(["pretrain", "--model", "digits_cnn", "--data", spec,
                               "--epochs", "2", "--out", str(ck), "--quiet"])
    assert rc == 0, err
    rc, stdout, err = run_cli(["eval", str(ck), "--data", spec])
    assert rc == 0 and "test accuracy" in stdout and "(48 images)" in stdout, err
    rc, stdout, err = run_cli(["eval", str(ck)])  # the folder is not a dataset name
    assert rc == 2 and err.count("\n") == 1 and "pass --data (folder:PATH" in err


def test_rlprune_prune_on_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", **arrays())
    out = tmp_path / "run"
    rc, _, err = run_cli(["prune", "--model", "digits_cnn", "--pretrain-epochs", "1",
                          "--data", f"npz:{tmp_path / 'd.npz'}?stream=yes",
                          "--budget", "params<=0.5", "--method", "uniform", "--quiet",
                          "--no-onnx", "--no-plots", "--out", str(out)])
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["feasible"] and report["data"].startswith("d-")


def cli_error(argv: list[str], *fragments: str) -> str:
    rc, _, err = run_cli(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("rlprune: error: ")
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def prune_argv(spec: str, out: Path) -> list[str]:
    return ["prune", "--model", "digits_cnn", "--pretrain-epochs", "1", "--data", spec,
            "--budget", "params<=0.5", "--method", "uniform", "--quiet", "--no-onnx",
            "--no-plots", "--out", str(out)]


def test_cli_data_mistakes_are_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cli_error(prune_argv(f"folder:{tmp_path / 'nowhere'}", out), "image folder not found")
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (4, 4)).save(loose / "a.png")
    cli_error(prune_argv(f"folder:{loose}", out), "has no class subfolders")
    broken = tmp_path / "broken"
    write_images(broken, ["cat", "dog"], 10)
    victim = break_one_image(broken, "garbage")
    cli_error(prune_argv(f"folder:{broken}", out), f"cannot read image {victim}")
    a = arrays()
    a.pop("x_test")
    np.savez(tmp_path / "keys.npz", **a)
    cli_error(prune_argv(f"npz:{tmp_path / 'keys.npz'}", out), "lacks x_test")
    a = arrays()
    a["y_train"] = a["y_train"][:10]
    np.savez(tmp_path / "shape.npz", **a)
    cli_error(prune_argv(f"npz:{tmp_path / 'shape.npz'}", out), "has 300 rows but y_train has 10")
    np.savez(tmp_path / "labels.npz", **arrays())
    cli_error(prune_argv(f"npz:{tmp_path / 'labels.npz'}?classes=2", out),
              "holds label 4, out of range")
    a = arrays(n=1)
    np.savez(tmp_path / "one.npz", **a)
    cli_error(prune_argv(f"npz:{tmp_path / 'one.npz'}", out), "too few for reward_fraction")
    cli_error(prune_argv(f"folder:{broken}?sise=3", out), "unknown option 'sise'")
    assert not out.exists()
