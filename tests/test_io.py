"""Safe loading of saved arrays and the saved-pairs folder format (seis_sklearn.io)."""

import json
import zipfile

import numpy as np
import pytest

from seis_sklearn.io import (
    ArrayFileError,
    list_pairs,
    load_array,
    load_pairs,
    save_pairs,
    write_manifest,
)


@pytest.fixture
def arrays(rng):
    A = rng.normal(size=(6, 3, 4, 5)).astype(np.float32)
    return A, np.ascontiguousarray(np.flip(A, axis=3))


def test_npy_is_memory_mapped_and_equal(tmp_path, arrays):
    A, _ = arrays
    np.save(tmp_path / "a.npy", A)
    loaded = load_array(tmp_path / "a.npy")
    assert isinstance(loaded, np.memmap) and not loaded.flags.writeable
    assert loaded.dtype == np.float32 and np.array_equal(loaded, A)
    in_memory = load_array(tmp_path / "a.npy", mmap=False)
    assert not isinstance(in_memory, np.memmap) and np.array_equal(in_memory, A)


def test_fortran_order_and_empty_arrays_round_trip(tmp_path, arrays):
    A, _ = arrays
    np.save(tmp_path / "f.npy", np.asfortranarray(A))
    np.save(tmp_path / "e.npy", np.zeros((0, 3)))
    assert np.array_equal(load_array(tmp_path / "f.npy"), A)
    assert load_array(tmp_path / "e.npy").shape == (0, 3)


def test_uncompressed_npz_members_are_memory_mapped(tmp_path, arrays):
    A, B = arrays
    np.savez(tmp_path / "p.npz", original=A, transformed=B)
    for key, want in (("original", A), ("transformed", B)):
        got = load_array(tmp_path / "p.npz", key)
        assert isinstance(got, np.memmap) and np.array_equal(got, want)


def test_compressed_npz_is_read_into_memory(tmp_path, arrays):
    A, _ = arrays
    np.savez_compressed(tmp_path / "c.npz", acts=A)
    got = load_array(tmp_path / "c.npz")  # one array: the key may be left out
    assert not isinstance(got, np.memmap) and np.array_equal(got, A)


@pytest.mark.parametrize("maker", ["npy", "npz"])
def test_object_arrays_are_refused_without_unpickling(tmp_path, maker):
    payload = np.array([{"a": 1}, None], dtype=object)
    if maker == "npy":
        np.save(tmp_path / "o.npy", payload, allow_pickle=True)
        path = tmp_path / "o.npy"
    else:
        np.savez(tmp_path / "o.npz", x=payload)
        path = tmp_path / "o.npz"
    with pytest.raises(ArrayFileError, match=r"holds Python objects \(dtype object\)"):
        load_array(path)


def test_truncated_and_corrupt_files_are_one_line_errors(tmp_path, arrays):
    A, _ = arrays
    np.save(tmp_path / "a.npy", A)
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    (tmp_path / "h.npy").write_bytes(data[:20])
    (tmp_path / "g.npy").write_bytes(b"definitely not numpy")
    np.savez(tmp_path / "z.npz", a=A)
    archive = (tmp_path / "z.npz").read_bytes()
    (tmp_path / "tz.npz").write_bytes(archive[: len(archive) // 2])
    cases = {
        "t.npy": r"truncated: its header promises 1440 bytes of float32 data \(6, 3, 4, 5\)",
        "h.npy": r"corrupt \.npy header",
        "g.npy": r"not a \.npy array",
        "tz.npz": r"not a readable \.npz \(zip\) archive",
    }
    for name, message in cases.items():
        with pytest.raises(ArrayFileError, match=message) as info:
            load_array(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)


def test_damaged_npz_member_is_reported(tmp_path, arrays):
    A, _ = arrays
    np.savez_compressed(tmp_path / "c.npz", a=A)
    with zipfile.ZipFile(tmp_path / "c.npz") as zf:
        info = zf.getinfo("a.npy")
    data = bytearray((tmp_path / "c.npz").read_bytes())
    start = info.header_offset + 30 + len("a.npy") + 40
    data[start : start + 40] = bytes(40)  # garble the deflate stream
    (tmp_path / "c.npz").write_bytes(bytes(data))
    with pytest.raises(ArrayFileError, match=r"c\.npz:a: "):
        load_array(tmp_path / "c.npz", "a")


def test_missing_and_ambiguous_names(tmp_path, arrays):
    A, B = arrays
    np.savez(tmp_path / "two.npz", a=A, b=B)
    np.save(tmp_path / "one.npy", A)
    with pytest.raises(ArrayFileError, match=r"holds 2 arrays \('a', 'b'\); name one"):
        load_array(tmp_path / "two.npz")
    with pytest.raises(ArrayFileError, match=r"holds no array named 'c' \(it holds 'a', 'b'\)"):
        load_array(tmp_path / "two.npz", "c")
    with pytest.raises(ArrayFileError, match="a .npy file holds one array"):
        load_array(tmp_path / "one.npy", "a")
    with pytest.raises(ArrayFileError, match="no such file"):
        load_array(tmp_path / "nope.npy")
    with pytest.raises(ArrayFileError, match="not a file"):
        load_array(tmp_path)


def test_save_and_load_pairs_keep_order_modules_and_values(tmp_path, arrays):
    A, B = arrays
    pairs = {"layer10": (A, B), "layer2": (2 * A, 2 * B), "block/conv": (-A, -B)}
    save_pairs(tmp_path, pairs, transform="hflip", modules={"layer2": "Conv2d"})
    layers, manifest = list_pairs(tmp_path)
    assert [x.name for x in layers] == ["layer10", "layer2", "block/conv"]  # given order
    assert [x.depth for x in layers] == [0, 1, 2]
    assert layers[1].module == "Conv2d" and manifest["transform"] == "hflip"
    assert (tmp_path / "block_conv.npz").exists()  # a path separator never makes a folder
    loaded = load_pairs(tmp_path)
    for name, (a, b) in pairs.items():
        assert np.array_equal(loaded[name][0], a) and np.array_equal(loaded[name][1], b)


def test_npy_naming_scheme_without_manifest_in_natural_order(tmp_path, arrays):
    A, B = arrays
    for name in ("layer10", "layer2", "layer1"):
        np.save(tmp_path / f"{name}.original.npy", A)
        np.save(tmp_path / f"{name}.transformed.npy", B)
    (tmp_path / "notes.txt").write_text("ignored")
    layers, manifest = list_pairs(tmp_path)
    assert manifest == {}
    assert [x.name for x in layers] == ["layer1", "layer2", "layer10"]
    a, b = layers[2].load()
    assert np.array_equal(a, A) and np.array_equal(b, B)


def test_pairs_folder_errors(tmp_path, arrays):
    A, B = arrays
    with pytest.raises(ArrayFileError, match="no such folder"):
        list_pairs(tmp_path / "missing")
    with pytest.raises(ArrayFileError, match="holds no saved pairs"):
        list_pairs(tmp_path)
    np.save(tmp_path / "x.original.npy", A)
    with pytest.raises(ArrayFileError, match=r"has x\.original\.npy but no x\.transformed\.npy"):
        list_pairs(tmp_path)
    np.save(tmp_path / "x.transformed.npy", B)
    np.savez(tmp_path / "x.npz", original=A, transformed=B)
    with pytest.raises(ArrayFileError, match="saved twice"):
        list_pairs(tmp_path)
    (tmp_path / "x.npz").unlink()
    write_manifest(tmp_path, [{"name": "y", "file": "y", "module": ""}])
    with pytest.raises(ArrayFileError, match="lists layer 'y' but its files are missing"):
        list_pairs(tmp_path)
    (tmp_path / "pairs.json").write_text("{not json")
    with pytest.raises(ArrayFileError, match="unreadable manifest"):
        list_pairs(tmp_path)
    (tmp_path / "pairs.json").write_text(json.dumps({"format": "other", "layers": []}))
    with pytest.raises(ArrayFileError, match="not a seis-pairs manifest"):
        list_pairs(tmp_path)


def test_save_pairs_rejects_bad_input(tmp_path, arrays):
    A, B = arrays
    with pytest.raises(TypeError, match="non-empty dict"):
        save_pairs(tmp_path, {})
    with pytest.raises(TypeError, match=r"pairs\['a'\] must be a pair"):
        save_pairs(tmp_path, {"a": A})
    with pytest.raises(ValueError, match="same file name"):
        save_pairs(tmp_path, {"a/b": (A, B), "a_b": (A, B)})
