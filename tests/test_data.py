"""Data loaders: digits split, CIFAR-10 pickles (restricted), download, image folders, purify I/O."""
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pursamere.experiments.data import (CIFAR10_CLASSES, OFFICIAL_MD5, OFFICIAL_URL, DataError, _restricted_load,
                                       download_cifar10, load_cifar10, load_cifar10_jpeg, load_digits_split,
                                       load_image_folder)
from pursamere.experiments.images import load_images, output_targets, save_images

SHARED_JPEG = Path("/work/shared/data/cifar10-jpeg")


# ---------------------------------------------------------------------------- helpers

def _dump(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=2))     # the official files are protocol 2


def make_toy_cifar_folder(root, n_per_batch=4, seed=0):
    """Write a CIFAR-10-format folder ``root/cifar-10-batches-py``; return the expected arrays."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True)
    expected = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
        _dump(d / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"{name}_{i}.png".encode() for i in range(n_per_batch)]})
        expected[name] = (data, labels)
    _dump(d / "batches.meta", {b"num_cases_per_batch": n_per_batch, b"num_vis": 3072,
                               b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
    return expected


def _tar_gz(path, files):
    """``files``: {member name: bytes}."""
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def loopback_server(tmp_path, monkeypatch):
    """Serve ``tmp_path/www`` on 127.0.0.1; the thread stops by itself after 20 s at most."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(www), **k)

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    server.timeout = 0.1
    stop, deadline = threading.Event(), time.monotonic() + 20

    def serve():
        while not stop.is_set() and time.monotonic() < deadline:
            server.handle_request()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.server_close()


# ---------------------------------------------------------------------------- digits

def test_digits_shapes_range_dtype():
    s = load_digits_split()
    assert s.x_train.shape[1:] == (1, 8, 8) and s.x_test.shape[1:] == (1, 8, 8)
    assert len(s.x_train) + len(s.x_test) == 1797 and len(s.x_test) == 540
    assert s.x_train.dtype == torch.float32 and s.y_train.dtype == torch.int64
    assert float(s.x_train.min()) == 0.0 and float(s.x_train.max()) == 1.0
    assert s.classes == tuple(str(i) for i in range(10))
    assert len(s.y_train) == len(s.x_train) and set(s.y_test.tolist()) == set(range(10))


def test_digits_split_is_stratified_and_fixed():
    a, b, c = load_digits_split(seed=0), load_digits_split(seed=0), load_digits_split(seed=1)
    all_counts = torch.bincount(torch.cat([a.y_train, a.y_test]), minlength=10).double()
    test_counts = torch.bincount(a.y_test, minlength=10).double()
    expected = all_counts * len(a.y_test) / (len(a.y_train) + len(a.y_test))
    assert (test_counts - expected).abs().max() <= 1.0
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_test, c.x_test)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_split(test_fraction=1.5)


# ---------------------------------------------------------------------------- CIFAR-10 pickles

def test_cifar_loader_values_order_and_limit(tmp_path):
    exp = make_toy_cifar_folder(tmp_path, n_per_batch=4, seed=3)
    x, y = load_cifar10(tmp_path, "train")
    data = np.concatenate([exp[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((exp[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(data.reshape(20, 3, 32, 32)).float() / 255)
    assert y.tolist() == labels
    # red plane first: pixel (0, 0) of channel 1 is byte 1024 of the row
    assert x[0, 1, 0, 0] == data[0, 1024] / 255
    x7, y7 = load_cifar10(tmp_path / "cifar-10-batches-py", "train", limit=7)   # spans two batch files
    assert torch.equal(x7, x[:7]) and torch.equal(y7, y[:7])
    xt, yt = load_cifar10(tmp_path, "test")
    assert torch.equal(xt, torch.from_numpy(exp["test_batch"][0].reshape(-1, 3, 32, 32)).float() / 255)
    assert yt.tolist() == exp["test_batch"][1]


def test_cifar_missing_folder_says_what_to_download_and_where(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path / "nowhere", "test")
    msg = str(e.value)
    assert OFFICIAL_URL in msg and OFFICIAL_MD5 in msg and "pursamere data cifar10 --download" in msg
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in msg


def test_cifar_missing_file_is_named(tmp_path):
    make_toy_cifar_folder(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(tmp_path, "train")
    load_cifar10(tmp_path, "test")       # the other split is still fine


@pytest.mark.parametrize("corruption, needle", [
    ("truncated", "corrupt"),
    ("empty", "bytes"),
    ("wrong_shape", r"\(N, 3072\)"),
    ("float_data", "uint8"),
    ("label_out_of_range", "0..9"),
    ("negative_label", "0..9"),
    ("label_count", "one per image"),
    ("not_a_dict", "dict"),
])
def test_corrupt_cifar_files_are_refused(tmp_path, corruption, needle):
    make_toy_cifar_folder(tmp_path, n_per_batch=3)
    f = tmp_path / "cifar-10-batches-py" / "test_batch"
    good = {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2]}
    if corruption == "truncated":
        f.write_bytes(f.read_bytes()[:5000])
    elif corruption == "empty":
        f.write_bytes(b"")
    elif corruption == "wrong_shape":
        _dump(f, {**good, b"data": np.zeros((3, 3000), np.uint8)})
    elif corruption == "float_data":
        _dump(f, {**good, b"data": np.zeros((3, 3072), np.float32)})
    elif corruption == "label_out_of_range":
        _dump(f, {**good, b"labels": [0, 10, 2]})
    elif corruption == "negative_label":
        _dump(f, {**good, b"labels": [0, -1, 2]})
    elif corruption == "label_count":
        _dump(f, {**good, b"labels": [0, 1]})
    elif corruption == "not_a_dict":
        _dump(f, [1, 2, 3])
    with pytest.raises(DataError, match=needle) as e:
        load_cifar10(tmp_path, "test")
    assert OFFICIAL_URL in str(e.value)


class _SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload, needle", [(_SystemCall, "system"), (_Exec, "exec")])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload, needle):
    # the payload is live: plain pickle runs it
    control = tmp_path / "control"
    pickle.loads(pickle.dumps({b"data": payload(control)}, protocol=2))
    assert control.exists()
    make_toy_cifar_folder(tmp_path)
    marker = tmp_path / "pwned"
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch",
          {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"evil": payload(marker)})
    with pytest.raises(DataError, match=needle) as e:
        load_cifar10(tmp_path, "test")
    assert "refusing" in str(e.value)
    assert not marker.exists()


def _py2_batch_pickle(data, labels):
    """The bytes Python 2.7 + numpy write for a batch (how the official files were made):
    protocol 2, Python 2 ``str`` as (SHORT_)BINSTRING, arrays via numpy.core.multiarray."""
    def s(b):
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def i(v):
        return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)

    n, d = data.shape
    out = b"\x80\x02}(" + s(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
    out += b"(" + i(1) + i(n) + i(d) + b"\x86" + b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
    out += b"(" + i(3) + s(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + i(0) + b"tb"
    out += b"\x89" + s(data.tobytes()) + b"tb"
    out += s(b"labels") + b"](" + b"".join(i(v) for v in labels) + b"e"
    return out + s(b"batch_label") + s(b"testing batch 1 of 1") + b"u."


def test_python2_format_batch_loads(tmp_path):
    make_toy_cifar_folder(tmp_path)
    data = np.random.default_rng(1).integers(0, 256, (3, 3072), dtype=np.uint8)
    blob = _py2_batch_pickle(data, [3, 1, 4])
    np.testing.assert_array_equal(pickle.loads(blob, encoding="bytes")[b"data"], data)   # the bytes are right
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(blob)
    x, y = load_cifar10(tmp_path, "test")
    assert torch.equal(x, torch.from_numpy(data.reshape(3, 3, 32, 32)).float() / 255) and y.tolist() == [3, 1, 4]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_rebuilds_numpy_arrays(protocol):
    obj = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "f": np.linspace(0, 1, 5).astype(np.float32),
           b"labels": [1, 2, 3], b"name": b"x\xff"}
    back = _restricted_load(io.BytesIO(pickle.dumps(obj, protocol=protocol)))
    assert back.keys() == obj.keys() and back[b"labels"] == [1, 2, 3] and back[b"name"] == b"x\xff"
    np.testing.assert_array_equal(back[b"data"], obj[b"data"])
    np.testing.assert_array_equal(back["f"], obj["f"])
    assert back[b"data"].dtype == np.uint8


# ---------------------------------------------------------------------------- download

def _toy_archive(tmp_path, www):
    src = tmp_path / "src"
    exp = make_toy_cifar_folder(src, n_per_batch=2, seed=5)
    archive = www / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return exp, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_over_loopback_verifies_and_extracts(tmp_path, loopback_server):
    www, base = loopback_server
    exp, md5 = _toy_archive(tmp_path, www)
    root = tmp_path / "data"
    where = download_cifar10(root, url=f"{base}/cifar-10-python.tar.gz", md5=md5, timeout=10)
    assert where == root / "cifar-10-batches-py"
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    x, y = load_cifar10(root, "test")
    assert torch.equal(x, torch.from_numpy(exp["test_batch"][0].reshape(-1, 3, 32, 32)).float() / 255)
    assert y.tolist() == exp["test_batch"][1]
    # already there: no network needed
    assert download_cifar10(root, url="http://127.0.0.1:1/unused", md5=md5) == where


def test_download_with_wrong_md5_leaves_nothing(tmp_path, loopback_server):
    www, base = loopback_server
    _toy_archive(tmp_path, www)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="MD5"):
        download_cifar10(root, url=f"{base}/cifar-10-python.tar.gz", md5="0" * 32, timeout=10)
    assert not root.exists()
    root.mkdir()
    with pytest.raises(DataError, match="MD5"):
        download_cifar10(root, url=f"{base}/cifar-10-python.tar.gz", md5="0" * 32, timeout=10)
    assert list(root.iterdir()) == []


def test_download_without_network_gives_manual_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "data"
    with pytest.raises(DataError) as e:
        download_cifar10(root, url=f"http://127.0.0.1:{_free_port()}/cifar.tar.gz", timeout=5)
    msg = str(e.value)
    assert "network unavailable" in msg and OFFICIAL_URL in msg and OFFICIAL_MD5 in msg
    assert str(root / "cifar-10-batches-py") in msg
    assert not root.exists()


@pytest.mark.parametrize("evil", ["cifar-10-batches-py/../../evil.txt", "../evil.txt", "/tmp/evil.txt", "link"])
def test_archive_with_escaping_member_is_refused(tmp_path, evil):
    src = tmp_path / "src"
    make_toy_cifar_folder(src, n_per_batch=1)
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        if evil == "link":
            info = tarfile.TarInfo("cifar-10-batches-py/passwd")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(info)
        else:
            info = tarfile.TarInfo(evil)
            info.size = 4
            tf.addfile(info, io.BytesIO(b"evil"))
    root = tmp_path / "a" / "b"
    with pytest.raises(DataError, match="escapes|link"):
        download_cifar10(root, url=archive.as_uri(), md5=hashlib.md5(archive.read_bytes()).hexdigest())
    assert not (tmp_path / "a" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (root / "cifar-10-batches-py").exists()
    assert [p.name for p in root.iterdir()] == ["cifar-10-python.tar.gz"]   # verified archive kept, nothing else


# ---------------------------------------------------------------------------- image folders

def _pets(tmp_path, sizes=((5, 4),) * 3):
    """Two classes written out of order; returns {class: [uint8 arrays in file-name order]}."""
    rng = np.random.default_rng(0)
    out = {}
    for cls in ("zebra", "ant"):
        out[cls] = []
        for i, (h, w) in enumerate(sizes):
            a = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            (tmp_path / "pets" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(tmp_path / "pets" / cls / f"{i:03d}.png")
            out[cls].append(a)
    (tmp_path / "pets" / "ant" / "notes.txt").write_text("not an image")
    return out


def _expected(arrays, classes):
    x = np.stack([a for c in classes for a in arrays[c]]).transpose(0, 3, 1, 2)
    return torch.from_numpy(x).float() / 255


def test_image_folder_and_its_tar_gz_load_with_right_labels(tmp_path):
    arrays = _pets(tmp_path)
    x, y, classes = load_image_folder(tmp_path / "pets")
    assert classes == ("ant", "zebra") and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert x.shape == (6, 3, 5, 4) and torch.equal(x, _expected(arrays, classes))
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "pets", arcname="train")
    xt, yt, ct = load_image_folder(archive)
    assert ct == classes and torch.equal(yt, y) and torch.equal(xt, x)
    x2, y2, _ = load_image_folder(archive, limit_per_class=2)
    assert y2.tolist() == [0, 0, 1, 1] and torch.equal(x2, x[[0, 1, 3, 4]])
    xg, _, _ = load_image_folder(tmp_path / "pets", mode="L")
    assert xg.shape == (6, 1, 5, 4)
    xo, yo, co = load_image_folder(tmp_path / "pets", classes=("zebra", "ant"))
    assert co == ("zebra", "ant") and yo.tolist() == [0, 0, 0, 1, 1, 1] and torch.equal(xo[:3], x[3:])
    with pytest.raises(DataError, match="expected classes"):
        load_image_folder(tmp_path / "pets", classes=("ant", "bee"))


def test_image_tar_with_link_or_escaping_name_is_refused(tmp_path):
    png = _png(np.zeros((2, 2, 3), np.uint8))
    _tar_gz(tmp_path / "escape.tar.gz", {"a/0.png": png, "../b/0.png": png})
    with pytest.raises(DataError, match="escapes"):
        load_image_folder(tmp_path / "escape.tar.gz")
    with tarfile.open(tmp_path / "link.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("a/0.png")
        info.size = len(png)
        tf.addfile(info, io.BytesIO(png))
        info = tarfile.TarInfo("b/1.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DataError, match="link"):
        load_image_folder(tmp_path / "link.tar.gz")


def test_mismatched_image_sizes_error_unless_resized(tmp_path):
    _pets(tmp_path, sizes=((5, 4), (5, 4), (6, 4)))
    with pytest.raises(DataError, match="size"):
        load_image_folder(tmp_path / "pets")
    x, _, _ = load_image_folder(tmp_path / "pets", size=(8, 7))
    assert x.shape == (6, 3, 8, 7) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_cifar10_jpeg_uses_cifar_label_order_and_checksums(tmp_path):
    files = {}
    for k, c in enumerate(CIFAR10_CLASSES):
        for i in range(2):
            files[f"test/{c}/{i:04d}.jpg"] = _jpeg(np.full((32, 32, 3), 20 * k, np.uint8))
    _tar_gz(tmp_path / "test.tar.gz", files)
    x, y = load_cifar10_jpeg(tmp_path, "test", limit_per_class=1)
    assert x.shape == (10, 3, 32, 32) and y.tolist() == list(range(10))
    assert (x.mean(dim=(1, 2, 3)) * 255 - 20 * torch.arange(10)).abs().max() < 3   # JPEG is lossy
    digest = hashlib.sha256((tmp_path / "test.tar.gz").read_bytes()).hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  test.tar.gz\n")
    assert load_cifar10_jpeg(tmp_path, "test")[0].shape == (20, 3, 32, 32)
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  test.tar.gz\n")
    with pytest.raises(DataError, match="SHA-256"):
        load_cifar10_jpeg(tmp_path, "test")
    del files["test/frog/0000.jpg"], files["test/frog/0001.jpg"]
    _tar_gz(tmp_path / "test.tar.gz", files)
    with pytest.raises(DataError, match="expected classes"):
        load_cifar10_jpeg(tmp_path, "test", verify=False)


def _jpeg(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.mark.skipif(not (SHARED_JPEG / "test.tar.gz").is_file(), reason="shared CIFAR-10 JPEG set not present")
def test_real_cifar10_jpeg_test_archive():
    x, y = load_cifar10_jpeg(SHARED_JPEG, "test", limit_per_class=5)
    assert x.shape == (50, 3, 32, 32) and torch.bincount(y).tolist() == [5] * 10
    assert 0.3 < float(x.mean()) < 0.6


# ---------------------------------------------------------------------------- purify I/O

def test_load_images_validates_npy(tmp_path):
    np.save(tmp_path / "bad.npy", np.full((2, 3, 4, 4), 1.5, np.float32))
    with pytest.raises(DataError, match="outside"):
        load_images(tmp_path / "bad.npy")
    np.save(tmp_path / "nan.npy", np.full((3, 4, 4), np.nan, np.float32))
    with pytest.raises(DataError, match="NaN"):
        load_images(tmp_path / "nan.npy")
    np.save(tmp_path / "ints.npy", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(DataError, match="float"):
        load_images(tmp_path / "ints.npy")
    a = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "one.npy", a)
    x, names = load_images(tmp_path / "one.npy")
    assert x.shape == (1, 3, 4, 4) and names == ["one"] and torch.equal(x[0], torch.from_numpy(a))


def test_save_and_load_images_round_trip(tmp_path):
    x = torch.randint(0, 256, (3, 3, 5, 6)).float() / 255
    save_images(x, tmp_path / "out.npy")
    back, names = load_images(tmp_path / "out.npy")
    assert torch.equal(back, x) and names == ["out_0000", "out_0001", "out_0002"]
    paths = save_images(x, tmp_path / "pngs", names=["a", "b", "c"])
    assert [p.name for p in paths] == ["a.png", "b.png", "c.png"]
    back, names = load_images(tmp_path / "pngs")
    assert torch.equal(back, x) and names == ["a", "b", "c"]          # k/255 values survive PNG exactly
    grey = torch.rand(1, 1, 4, 4)
    save_images(grey, tmp_path / "g.png")
    g, _ = load_images(tmp_path / "g.png")
    assert g.shape == (1, 1, 4, 4) and (g - grey).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(DataError, match="outside"):
        save_images(x + 1, tmp_path / "bad.npy")
    assert not (tmp_path / "bad.npy").exists()
    with pytest.raises(DataError, match="shape"):
        load_images([tmp_path / "out.npy", tmp_path / "g.png"])


def test_unreadable_npy_and_bad_outputs_get_one_clear_error(tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(DataError, match="empty.npy is not a .npy file"):
        load_images(tmp_path / "empty.npy")
    (tmp_path / "text.npy").write_text("1 2 3")
    with pytest.raises(DataError, match="text.npy is not a .npy file"):
        load_images(tmp_path / "text.npy")
    np.save(tmp_path / "ok.npy", np.zeros((2, 1, 4, 4), np.float32))
    (tmp_path / "ok.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:100])  # cut off inside the data
    with pytest.raises(DataError, match="cannot read .*ok.npy"):
        load_images(tmp_path / "ok.npy")
    x = torch.zeros(2, 1, 4, 4)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "d.npy").mkdir()
    for out, message in [("o.jpg", "not .jpg"), ("o.txt", "not .txt"), ("one.png", "a single .png holds one image, got 2"),
                         ("a-file", "is a file, not a folder"), ("d.npy", "is a folder")]:
        with pytest.raises(DataError, match=message):
            output_targets(tmp_path / out, len(x))
        with pytest.raises(DataError, match=message):
            save_images(x, tmp_path / out)
    with pytest.raises(DataError, match="a-file is a file"):
        output_targets(tmp_path / "a-file" / "pngs", len(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "d.npy", "empty.npy", "ok.npy", "text.npy"]  # nothing written
    assert output_targets(tmp_path / "pngs", 2, ["a", "b"]) == [tmp_path / "pngs" / "a.png", tmp_path / "pngs" / "b.png"]
