"""Regression tests of an adversarial run of the command line and the API.

Every case is a file made here in ``tmp_path`` (bombs are forged: a small member
whose header and directory promise gigabytes), run through ``seis`` — in a
subprocess where the process itself is the point (memory limits, a full disk
behind stdout, a bus error) — and must end in one line on stderr and exit status 1.
"""

import io
import json
import os
import resource
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from seis_sklearn import SEISScorer, SubspaceDenoiser, pair, seis_score
from seis_sklearn.cli import main
from seis_sklearn.io import ArrayFileError, list_pairs, load_array, save_pairs
from seis_sklearn.metrics import channelwise_geed, latent_geed, linear_cka

SEIS = Path(sys.executable).with_name("seis")


def one_line_error(argv, capsys, match):
    """``seis ARGV`` fails with exit status 1 and one line on stderr containing ``match``."""
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert match in err, err
    return err


def npy_bytes(header, data=b"", version=(1, 0), length=None):
    """A .npy file with a header written by hand (``length`` may lie)."""
    text = header.encode("latin1")
    text += b" " * (64 - (10 + len(text) + 1) % 64) + b"\n"
    size = len(text) if length is None else length
    fmt = "<H" if version == (1, 0) else "<I"
    return b"\x93NUMPY" + bytes(version) + struct.pack(fmt, size) + text + data


@pytest.fixture
def good(tmp_path, rng):
    A = rng.normal(size=(30, 3, 5, 5))
    np.save(tmp_path / "good.npy", A)
    return tmp_path / "good.npy", A


# ------------------------------------------------------------------------ .npy headers


@pytest.mark.parametrize(
    "shape, match",
    [
        ("(10**30, 2)", "corrupt .npy header"),  # an expression, not a literal
        ("(1000000000000000000000000000000, 2)", "truncated: its header promises"),
        ("(-2, 3)", "not a tuple of whole numbers >= 0"),
        ("(3, -1)", "not a tuple of whole numbers >= 0"),
        ("(4294967296, 4294967296)", "truncated: its header promises"),  # int64 overflow
        ("(9223372036854775808,)", "truncated: its header promises"),  # 2**63
        ("(3074457345618258603, 3)", "truncated: its header promises"),  # product → -1
    ],
)
def test_malformed_npy_shapes_are_one_line(tmp_path, capsys, shape, match):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(npy_bytes(f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}"))
    one_line_error(["score", bad, bad], capsys, match)


def test_unterminated_and_lying_headers_are_one_line(tmp_path, good, capsys):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", 30) + b"{'descr': '<f8', 'shape': (2")
    one_line_error(["score", bad, good[0]], capsys, "corrupt .npy header")
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }"
    bad.write_bytes(npy_bytes(header, b"\0" * 48, length=20))  # the length field lies
    one_line_error(["score", bad, good[0]], capsys, "corrupt .npy header")


def test_extra_header_keys_are_refused_as_numpy_refuses_them(tmp_path, good, capsys):
    bad = tmp_path / "extra.npy"
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (30, 75), 'extra': 1, }"
    bad.write_bytes(npy_bytes(header, b"\0" * 30 * 75 * 8))
    with pytest.raises(ValueError, match="correct keys"):
        np.load(bad)  # numpy's own reader refuses it too
    one_line_error(["score", bad, good[0]], capsys, "Header does not contain the correct keys")


def test_format_3_loads_and_big_endian_loads_without_copying(tmp_path, good, capsys):
    path, A = good
    v3 = tmp_path / "v3.npy"
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {A.shape}, }}"
    v3.write_bytes(npy_bytes(header, A.tobytes(), version=(3, 0)))
    assert np.array_equal(load_array(v3), A)
    big = tmp_path / "big.npy"
    np.save(big, A.astype(">f8"))
    loaded = load_array(big)
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.dtype(">f8")
    rotated = np.ascontiguousarray(np.rot90(A, axes=(2, 3)))
    np.save(tmp_path / "rot.npy", rotated.astype(">f8"))
    assert main(["score", str(big), str(tmp_path / "rot.npy"), "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["equivariance"] == seis_score(A, rotated).equivariance  # both cross-fitted


# ------------------------------------------------------------------------- .npz archives


def forged_npz(path, member, header_shape, promised, compress, payload=b"\0" * 64):
    """An .npz whose member header and directory promise ``promised`` bytes of float64.

    The member really holds a few bytes; its central directory entry is patched to
    the promised size, as a forger (or a decompression bomb) would have it.
    """
    header = npy_bytes(f"{{'descr': '<f8', 'fortran_order': False, 'shape': {header_shape}, }}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compress) as zf:
        zf.writestr(member + ".npy", header + payload)
    data = bytearray(buffer.getvalue())
    central = data.rfind(b"PK\x01\x02")  # the one central directory entry
    struct.pack_into("<I", data, central + 24, len(header) + promised)
    path.write_bytes(bytes(data))


def _limited(argv, limit_bytes):
    """Run ``seis ARGV`` with an address-space limit; return (status, stderr)."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    proc = subprocess.run(
        [str(SEIS), *map(str, argv)], capture_output=True, text=True, preexec_fn=limit,
        timeout=300,
    )  # fmt: skip
    return proc.returncode, proc.stderr


def test_members_larger_than_memory_are_refused_before_inflating(tmp_path):
    """A deflate member promising 2 GiB under 2 GiB: refused from the promise, before
    a byte is inflated."""
    bomb = tmp_path / "bomb.npz"
    forged_npz(bomb, "acts", (2 << 27,), 2 << 30, zipfile.ZIP_DEFLATED)
    status, err = _limited(["score", f"{bomb}:acts", f"{bomb}:acts"], 2 << 30)
    assert status == 1 and len(err.splitlines()) == 1, err
    assert "more than this process may allocate" in err


@pytest.mark.parametrize(
    "compress, name", [(zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "lzma")]
)
def test_bzip2_and_lzma_members_are_refused_before_a_byte_is_read(tmp_path, compress, name):
    """Regression (issue 31): a 38 KB .npz whose bzip2 member inflates to 4 GiB raised
    MemoryError at 2.8 GB RSS while its 10-byte magic was read — zipfile inflates
    bzip2 and lzma with no bound on one read. A real bomb here: 256 MiB of zeros in a
    few hundred bytes, under a 1.5 GiB limit; one line, exit 1."""
    size = 1 << 28
    bomb = tmp_path / "bomb.npz"
    header = npy_bytes(f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({size // 8},), }}")
    zeros = b"\0" * (1 << 24)
    with zipfile.ZipFile(bomb, "w", compression=compress) as zf:
        with zf.open("acts.npy", "w", force_zip64=True) as member:
            member.write(header)
            for _ in range(size // len(zeros)):
                member.write(zeros)
    assert bomb.stat().st_size < 1 << 20
    status, err = _limited(["score", f"{bomb}:acts", f"{bomb}:acts"], 3 << 29)
    assert status == 1 and len(err.splitlines()) == 1, err
    assert f"compressed with {name}, which cannot be inflated with a bound" in err
    with pytest.raises(ArrayFileError, match="re-save it"):
        load_array(bomb, "acts")


def test_a_directory_that_lies_about_a_member_is_detected(tmp_path, good, capsys, rng):
    A = rng.normal(size=(30, 3, 5, 5))
    path = tmp_path / "p.npz"
    np.savez(path, original=A, transformed=A)
    data = bytearray(path.read_bytes())
    central = data.find(b"PK\x01\x02")
    (size,) = struct.unpack_from("<I", data, central + 24)
    struct.pack_into("<I", data, central + 24, size + 4096)  # says larger than it is
    path.write_bytes(bytes(data))
    one_line_error(["score", path], capsys, "corrupt or forged")
    with pytest.raises(ArrayFileError, match="the archive says the member holds"):
        load_array(path, "original")


# ----------------------------------------------------------------------------- writing


def test_output_only_to_regular_files(tmp_path, good, capsys):
    path = good[0]
    one_line_error(["score", path, path, "--out", "/dev/full"], capsys, "not a regular file")
    one_line_error(
        ["score", path, path, "--out", "/dev/null", "--force"], capsys, "not a regular file"
    )
    assert Path("/dev/null").is_char_device()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(["score", path, path, "--out", fifo, "--force"], capsys, "not a regular file")
    assert not fifo.is_file()
    if os.geteuid() == 0:  # a character device made here, as the run did
        node = tmp_path / "node"
        os.mknod(node, 0o600 | 0o020000, os.makedev(1, 3))
        one_line_error(["score", path, path, "--out", node, "--force"], capsys, "regular")
        assert node.is_char_device()


def test_a_full_disk_behind_stdout_is_one_line_and_exit_1(good):
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [str(SEIS), "score", str(good[0]), str(good[0])], stdout=full,
            stderr=subprocess.PIPE, text=True, timeout=600,
        )  # fmt: skip
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1 and "No space left" in proc.stderr


def test_a_truncated_memory_map_is_one_line_not_a_bus_error(tmp_path):
    """A file cut short under a running read: exit 1 with one line naming it (SIGBUS is
    caught by the handler ``seis`` installs); a truncation between chunks and a rewrite
    in place are errors of the pass itself."""
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from seis_sklearn._files import exit_on_bus_error
        path = {str(tmp_path / "x.npy")!r}
        np.save(path, np.ones((512, 512)))
        m = np.load(path, mmap_mode="r")
        with exit_on_bus_error("seis score: error: ", lambda: (path,)):
            os.truncate(path, 4096)
            print(float(m.sum()))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"seis score: error: {tmp_path / 'x.npy'}: truncated while being read (bus error)"
    ]
    from seis_sklearn._moments import InputChangedError, InputFiles

    path = tmp_path / "y.npy"
    np.save(path, np.ones((64, 8)))
    m = np.load(path, mmap_mode="r")
    files = InputFiles([m])
    os.utime(path, ns=(1, 1))  # rewritten in place: another modification time
    with pytest.raises(InputChangedError, match="changed while being read"):
        files.after_pass()
    files = InputFiles([m])
    os.truncate(path, 200)
    with pytest.raises(InputChangedError, match="truncated while being read"):
        files.before_chunk()


def test_the_bus_error_handler_itself_never_raises(tmp_path):
    """Regression (issue 31): the handler joined the files' ``Path`` objects as strings,
    raised TypeError inside the C callback — ignored — and the faulting read ran again,
    forever, at 100 % CPU. Now: Paths, and even a files() that raises, end in one line
    and exit 1."""
    for files, expected in (
        ("lambda: (pathlib.Path(path),)", f"{tmp_path / 'x.npy'}"),
        ("lambda: 1 / 0", "a memory-mapped input"),
    ):
        script = textwrap.dedent(
            f"""
            import os, pathlib, numpy as np
            from seis_sklearn._files import exit_on_bus_error
            path = {str(tmp_path / "x.npy")!r}
            np.save(path, np.ones((512, 512)))
            m = np.load(path, mmap_mode="r")
            with exit_on_bus_error("seis score: error: ", {files}):
                os.truncate(path, 4096)
                print(float(m.sum()))
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.splitlines() == [
            f"seis score: error: {expected}: truncated while being read (bus error)"
        ]


def test_a_file_truncated_between_the_check_and_the_read_ends_the_command(tmp_path):
    """The command line, deterministically: the input is cut short right after the
    check before a chunk, so the read itself faults (SIGBUS) — `seis score` ends with
    one line naming the file and exit 1, within the timeout."""
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    rng = np.random.default_rng(0)
    np.save(a, rng.normal(size=(400, 4, 16, 16)))
    np.save(b, rng.normal(size=(400, 4, 16, 16)))
    script = textwrap.dedent(
        f"""
        import os, sys
        from seis_sklearn import _moments
        checked = _moments.InputFiles.before_chunk
        def cut_after_the_check(self):
            checked(self)
            os.truncate({str(b)!r}, 4096)
        _moments.InputFiles.before_chunk = cut_after_the_check
        from seis_sklearn.cli import console
        sys.argv = ["seis", "score", {str(a)!r}, {str(b)!r}, "--permutations", "300"]
        console()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()  # the files of the pass being read
    assert len(lines) == 1 and lines[0] == (
        f"seis score: error: {a}, {b}: truncated while being read (bus error)"
    )


# ------------------------------------------------------------------ pairs folders, runs


def test_manifest_entries_of_the_wrong_type_name_the_key(tmp_path, rng, capsys):
    A = rng.normal(size=(20, 3, 5, 5))
    folder = save_pairs(tmp_path / "pairs", {"c": (A, A)})
    manifest = json.loads((folder / "pairs.json").read_text())
    for change, match in (
        (
            {"layers": [{"name": "c", "file": ["c"]}]},
            "layers[0].file must be a string; got a list",
        ),
        ({"transform": [1, 2]}, "'transform' must be a string; got a list"),
        ({"layers": []}, "'layers' is empty"),
        ({"layers": ["c"]}, "layers[0] must be an object"),
    ):
        (folder / "pairs.json").write_text(json.dumps({**manifest, **change}))
        err = one_line_error(["report", "--pairs", folder, "--out", tmp_path / "o"], capsys, match)
        assert "pairs.json" in err


def test_links_out_of_a_pairs_folder_are_refused(tmp_path, rng):
    A = rng.normal(size=(20, 3, 5, 5))
    outside = save_pairs(tmp_path / "elsewhere", {"c": (A, A)})
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "c.npz").symlink_to(outside / "c.npz")
    with pytest.raises(ArrayFileError, match="outside the folder"):
        list_pairs(folder)
    (folder / "c.npz").unlink()
    (folder / "real.npz").write_bytes((outside / "c.npz").read_bytes())
    (folder / "c.npz").symlink_to(folder / "real.npz")  # inside: followed
    assert [layer.name for layer in list_pairs(folder)[0]] == ["c", "real"]


def test_a_damaged_run_record_and_failing_model_code_are_one_line(tmp_path, rng, capsys):
    A = rng.normal(size=(20, 3, 5, 5))
    folder = save_pairs(tmp_path / "pairs", {"c": (A, A)})
    out = tmp_path / "out"
    out.mkdir()
    for record in ([1, 2], {"fingerprint": "x", "status": "running", "settings": "s"}):
        (out / "seis-run.json").write_text(json.dumps(record))
        one_line_error(
            ["report", "--pairs", folder, "--out", out, "--resume"], capsys, "is damaged"
        )
    np.save(tmp_path / "x.npy", rng.normal(size=(8, 1, 7, 7)).astype(np.float32))
    for name, code, match in (
        ("keyerror.py", "def build():\n    return {}['net']\n", "build() failed (KeyError"),
        ("syntax.py", "def build(:\n", "failed to load at line 1 (SyntaxError"),
    ):
        (tmp_path / name).write_text(code)
        err = one_line_error(
            ["report", "--model", f"{tmp_path / name}:build", "--inputs", tmp_path / "x.npy",
             "--transform", "rot90", "--out", tmp_path / "o2"],
            capsys, match,
        )  # fmt: skip
        assert name in err


# ------------------------------------------------------------------------------- API


def test_geed_metrics_are_scale_free_at_extreme_scales(rng):
    from functools import partial

    from seis_sklearn import transforms

    fx = rng.normal(size=(8, 3, 5, 5))
    orbit = [transforms.rot90(fx, k) + 0.1 * rng.normal(size=fx.shape) for k in range(4)]
    actions = [partial(transforms.rot90, k=k) for k in range(4)]
    want = (
        channelwise_geed(orbit, actions),
        latent_geed(orbit),
        latent_geed(orbit, metric="cosine"),
    )
    for scale in (1e200, 1e300, 1e-300):
        scaled = [o * scale for o in orbit]
        with np.errstate(all="raise"):  # no overflow, not even a warning
            got = (
                channelwise_geed(scaled, actions),
                latent_geed(scaled),
                latent_geed(scaled, metric="cosine"),
            )
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_cv_out_of_range_torch_tensors_and_stacks(rng):
    torch = pytest.importorskip("torch")
    A = rng.normal(size=(30, 3, 5, 5))
    B = np.flip(A, axis=3).copy()
    with pytest.raises(ValueError, match=r"cv gives test indices out of range: 25\.\.40"):
        seis_score(A, B, cv=[(np.arange(20), np.arange(25, 41))])
    tensor = torch.from_numpy(A).requires_grad_(True)
    assert (
        seis_score(tensor, torch.from_numpy(B), cv=None).as_dict()
        == seis_score(A, B, cv=None).as_dict()
    )
    with pytest.raises(ValueError, match="y is None, so X must be a paired stack made by"):
        SEISScorer().fit(A)  # an NCHW array of 3 channels is not 3 views
    with pytest.raises(ValueError, match="y is None"):
        SEISScorer().fit(np.stack([A, B], axis=1))  # by hand: say it with pair() or y
    assert SEISScorer().fit(pair(A, B)).result_.equivariance == pytest.approx(
        seis_score(A, B, cv=None).equivariance
    )


def test_the_denoiser_refuses_non_numeric_input_naming_x(rng):
    pd = pytest.importorskip("pandas")
    X = rng.normal(size=(20, 4))
    for bad, match in (
        (X.astype(str), "X must be numeric; got dtype <U"),
        (X.astype(str).astype(object), r"X must be numeric; it holds '"),
        (pd.DataFrame({"a": pd.Categorical(["x", "y"] * 10), "b": np.arange(20.0)}),
         "X must be numeric; column 'a' has dtype category"),
    ):  # fmt: skip
        with pytest.raises(TypeError, match=match):
            SubspaceDenoiser().fit(bad)
    fitted = SubspaceDenoiser().fit(X)
    with pytest.raises(TypeError, match="X must be numeric"):
        fitted.transform(X.astype(str))
    with pytest.raises(ValueError, match="^X: "):
        SubspaceDenoiser().fit(np.zeros((1, 3)))  # scikit-learn's message, naming X
    linear_cka(X, X[:, :3])  # layers of different widths: what CKA compares
    with pytest.raises(ValueError, match="A and B must hold the same samples.*got 20 samples "
                       r"in A \(20, 4\) and 10 in B \(10, 3\)"):  # fmt: skip
        linear_cka(X, X[:10, :3])
    with pytest.raises(TypeError, match="reference must be a numeric array"):
        latent_geed([X, X], reference=[["a", "b", "c", "d"]] * 3)
    with pytest.raises(ValueError, match="reference has 3 features"):
        latent_geed([X, X], reference=X[:, :3])


def test_shapes_are_compared_from_the_headers_before_anything_is_inflated(tmp_path, good, capsys):
    """A compressed member promising 2 GiB beside an array of another shape: the shapes
    differ, and nothing was inflated to find out."""
    bomb = tmp_path / "bomb.npz"
    forged_npz(bomb, "acts", (2**28,), 2**31, zipfile.ZIP_DEFLATED)
    err = one_line_error(["score", f"{bomb}:acts", good[0]], capsys, "must have the same shape")
    assert "(268435456,)" in err and "(30, 3, 5, 5)" in err
