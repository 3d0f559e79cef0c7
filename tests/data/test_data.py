from __future__ import annotations

import re

import numpy as np
import pytest

from leanml.data import check_regression_targets, load_data
from leanml.errors import InvalidInputError


def test_builtins_have_the_documented_shapes():
    d = load_data("digits", seed=0)
    assert d.kind == "image" and d.input_shape == (1, 8, 8) and d.n_classes == 10
    assert len(d.train) + len(d.val) + len(d.test) == 1797
    for name, cols, classes in (("breast_cancer", 30, 2), ("wine", 13, 3)):
        t = load_data(name, seed=0)
        assert t.kind == "tabular" and t.input_shape == (cols,) and t.n_classes == classes
        assert len(t.feature_names) == cols


def test_splits_follow_the_seed():
    a, b, c = load_data("wine", seed=1), load_data("wine", seed=1), load_data("wine", seed=2)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert not np.array_equal(a.test.x, c.test.x)


def test_csv_with_target_and_one_hot(tmp_path):
    rows = ["a,b,colour,label"] + [
        f"{i},{i % 3},{'red' if i % 2 else 'blue'},{i % 2}" for i in range(60)
    ]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    with pytest.raises(
        InvalidInputError, match=r"non-numeric columns colour \(2 distinct values\).*one_hot"
    ):
        load_data("csv:d.csv", target="label", base_dir=tmp_path)
    d = load_data("csv:d.csv", target="label", base_dir=tmp_path, one_hot=True)
    assert d.feature_names == ["a", "b", "colour=blue", "colour=red"]
    assert d.train.y.dtype == np.int64
    with pytest.raises(InvalidInputError, match="target column 'y' does not exist"):
        load_data("csv:d.csv", target="y", base_dir=tmp_path)


def test_npz_predefined_split(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x_train=rng.normal(size=(100, 3)),
        y_train=rng.integers(0, 2, 100),
        x_test=rng.normal(size=(30, 3)),
        y_test=rng.integers(0, 2, 30),
    )
    d = load_data("npz:d.npz", base_dir=tmp_path, val=0.2)
    assert len(d.test) == 30 and len(d.train) + len(d.val) == 100 and len(d.val) == 20
    assert d.train.x.dtype == np.float32


def test_npz_with_pickled_objects_is_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    import zipfile

    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.write(tmp_path / "obj.npy", "x.npy")
    with pytest.raises(InvalidInputError, match="not a readable NPZ of plain arrays"):
        load_data("npz:d.npz", base_dir=tmp_path)


def test_entry_point_beside_the_recipe(tmp_path):
    (tmp_path / "mydata.py").write_text(
        "import numpy as np\n"
        "def make():\n"
        "    rng = np.random.default_rng(0)\n"
        "    return rng.normal(size=(90, 4)).astype('float32'), rng.integers(0, 3, 90)\n"
    )
    d = load_data("mydata:make", base_dir=tmp_path)
    assert d.input_shape == (4,) and d.n_classes == 3
    with pytest.raises(InvalidInputError, match="has no attribute 'nope'"):
        load_data("mydata:nope", base_dir=tmp_path)


def test_regression_targets_stay_float(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "r.npz", x=rng.normal(size=(80, 2)), y=rng.normal(size=80))
    d = load_data("npz:r.npz", base_dir=tmp_path)
    assert d.train.y.dtype == np.float32 and d.n_classes is None


def test_csv_that_is_not_utf8(tmp_path):
    rows = ["café,b,label"] + [f"{i},{i % 3},{i % 2}" for i in range(40)]
    (tmp_path / "d.csv").write_bytes("\n".join(rows).encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"not UTF-8 text.*must be UTF-8.*iconv"):
        load_data("csv:d.csv", target="label", base_dir=tmp_path)
    (tmp_path / "d.csv").write_bytes("\n".join(rows).encode("utf-8-sig"))  # Excel's "CSV UTF-8"
    d = load_data("csv:d.csv", target="label", base_dir=tmp_path)
    assert d.feature_names == ["café", "b"]


def test_csv_with_only_the_target_column(tmp_path):
    (tmp_path / "d.csv").write_text("label\n" + "\n".join(str(i % 2) for i in range(40)))
    with pytest.raises(InvalidInputError, match="only the target column 'label'.*feature column"):
        load_data("csv:d.csv", target="label", base_dir=tmp_path)


@pytest.mark.parametrize(
    "y,needles",
    [
        (
            np.r_[np.zeros(49, np.int64), [1]],
            ["50 rows cannot be split", "class 1: 1, class 0: 49"],
        ),
        (np.array([0, 1, 0, 1]), ["4 rows cannot be split", "class 0: 2, class 1: 2"]),
        (np.array([0.5, 1.5]), ["2 rows cannot be split", "give more rows"]),
    ],
)
def test_too_few_rows_to_split(tmp_path, y, needles):
    np.savez(tmp_path / "d.npz", x=np.ones((len(y), 3), np.float32), y=y)
    with pytest.raises(InvalidInputError) as e:
        load_data("npz:d.npz", base_dir=tmp_path)
    for n in needles:
        assert n in str(e.value)


def test_npz_predefined_split_too_few_of_a_class(tmp_path):
    np.savez(
        tmp_path / "d.npz",
        x_train=np.ones((20, 3), np.float32),
        y_train=np.r_[np.zeros(19, np.int64), [1]],
        x_test=np.ones((5, 3), np.float32),
        y_test=np.zeros(5, np.int64),
    )
    with pytest.raises(
        InvalidInputError, match=r"\(x_train\): 20 rows cannot be split.*class 1: 1"
    ):
        load_data("npz:d.npz", base_dir=tmp_path)


@pytest.mark.parametrize(
    "labels,message",
    [
        ({"y_train"}, "has y_train but no y_test"),
        ({"y_test"}, "has y_test but no y_train"),
        ({"y_train", "y_test"}, "has y_train, y_test but no y_val"),
    ],
)
def test_npz_labels_on_some_splits_only(tmp_path, labels, message):
    arrays = {
        "x_train": np.ones((40, 3), np.float32),
        "x_val": np.ones((10, 3), np.float32),
        "x_test": np.ones((10, 3), np.float32),
    }
    if labels == {"y_train"} or labels == {"y_test"}:
        del arrays["x_val"]
    for key in labels:
        arrays[key] = np.arange(len(arrays["x" + key[1:]])) % 2
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(
        InvalidInputError, match=f"{message}; labels must be on every split or on none"
    ):
        load_data("npz:d.npz", base_dir=tmp_path)


def test_entry_point_labels_on_some_splits_only(tmp_path):
    (tmp_path / "parts.py").write_text(
        "import numpy as np\n"
        "def make():\n"
        "    x = np.ones((30, 2), 'float32')\n"
        "    return {'train': (x, np.arange(30) % 2), 'test': (x, None)}\n"
    )
    with pytest.raises(InvalidInputError, match="train/val split.* have labels but test do not"):
        load_data("parts:make", base_dir=tmp_path)


@pytest.mark.parametrize(
    "x,kind",
    [(np.array([["a", "b"]] * 40), "<U1 (text)"), (np.array([[b"a"]] * 40), "|S1 (bytes)")],
)
def test_npz_arrays_that_are_not_numbers(tmp_path, x, kind):
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 2)
    with pytest.raises(
        InvalidInputError, match=re.escape(f"array 'x' has dtype {kind}") + ".*must be numbers"
    ):
        load_data("npz:d.npz", base_dir=tmp_path)
    np.savez(tmp_path / "s.npz", x_train=np.ones((40, 2)), x_test=x)
    with pytest.raises(InvalidInputError, match=r"array 'x_test' has dtype"):
        load_data("npz:s.npz", base_dir=tmp_path)


# -- files that are not what they claim, and targets that do not fit the metric --------------------


def test_paths_that_are_not_regular_files(tmp_path):
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(InvalidInputError, match=r"d.csv' is a directory; give a CSV file"):
        load_data(f"csv:{tmp_path / 'd.csv'}", target="y")
    with pytest.raises(InvalidInputError, match=r"'/dev/null' is not a regular file"):
        load_data("npz:/dev/null")
    with pytest.raises(InvalidInputError, match=r"nope.npz' does not exist"):
        load_data(f"npz:{tmp_path / 'nope.npz'}")


def test_empty_npz_is_one_clear_error(tmp_path):
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(InvalidInputError, match=r"e.npz' is not a readable NPZ .*empty: 0 bytes"):
        load_data(f"npz:{tmp_path / 'e.npz'}")


def test_csv_duplicated_header_names_the_column(tmp_path):
    (tmp_path / "d.csv").write_text(
        "a,b,a,y\n" + "".join(f"{i},{i},{i},{i % 2}\n" for i in range(60))
    )
    with pytest.raises(InvalidInputError, match=r"names column\(s\) \['a'\] more than once"):
        load_data(f"csv:{tmp_path / 'd.csv'}", target="y")


@pytest.mark.parametrize(("value", "shown"), [("spam", "'spam'"), ("1", "'1'")])
def test_csv_single_class_target(tmp_path, value, shown):
    (tmp_path / "d.csv").write_text("a,y\n" + "".join(f"{i},{value}\n" for i in range(60)))
    with pytest.raises(
        InvalidInputError, match=f"target column 'y' holds a single class \\({shown}\\)"
    ):
        load_data(f"csv:{tmp_path / 'd.csv'}", target="y")


def test_nan_targets_and_features_are_named(tmp_path):
    rows = "a,b,t\n" + "".join(
        f"{i},{'' if i == 2 else i},{'nan' if i == 3 else i / 3}\n" for i in range(60)
    )
    (tmp_path / "d.csv").write_text(rows)
    with pytest.raises(InvalidInputError, match=r"feature column\(s\) \['b'\] holds 1 NaN"):
        load_data(f"csv:{tmp_path / 'd.csv'}", target="t")
    (tmp_path / "d.csv").write_text(rows.replace(",,", ",0,"))
    with pytest.raises(InvalidInputError, match=r"target column 't' holds 1 NaN"):
        load_data(f"csv:{tmp_path / 'd.csv'}", target="t")
    y = np.arange(50, dtype=np.float32) / 3
    y[7] = np.nan
    np.savez(tmp_path / "d.npz", x=np.ones((50, 3), np.float32), y=y)
    with pytest.raises(InvalidInputError, match=r"the targets \(y\) holds 1 NaN"):
        load_data(f"npz:{tmp_path / 'd.npz'}")


def _csv(tmp_path, values) -> str:
    (tmp_path / "d.csv").write_text("a,y\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values)))
    return f"csv:{tmp_path / 'd.csv'}"


@pytest.mark.parametrize("metric", ["mse", "mae", "r2"])
def test_regression_metric_on_class_labels_is_refused(tmp_path, metric):
    with pytest.raises(InvalidInputError, match=r"'wine' is a classification dataset \(3 classes"):
        check_regression_targets(load_data("wine"), metric)
    ds = load_data(_csv(tmp_path, [i % 4 for i in range(80)]), target="y")
    with pytest.raises(InvalidInputError, match=r"only 4 distinct values over 80 rows"):
        check_regression_targets(ds, metric)


@pytest.mark.parametrize(
    "values",
    [
        [float(i % 4) for i in range(80)],  # written 0.0, 1.0, ...: the user says numbers
        [i * 3 for i in range(80)],  # many distinct integers: a count, not classes
        [i % 4 for i in range(16)],  # 4 rows per value: too few to call them classes
    ],
)
def test_numeric_integer_targets_stay_regression(tmp_path, values):
    ds = load_data(_csv(tmp_path, values), target="y", val=0.25, test=0.25)
    check_regression_targets(ds, "mse")
    np.savez(tmp_path / "d.npz", x=np.ones((80, 2), np.float32), y=np.arange(80.0) % 4)
    check_regression_targets(load_data(f"npz:{tmp_path / 'd.npz'}"), "r2")
