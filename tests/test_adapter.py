"""Any classifier: the adapter (normalise, resize, frozen, input gradients) and loading a user's model safely."""
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pursamere import Purifier, PurifyConfig
from pursamere.experiments.user_models import ClassifierSpec, classifier_state_from_file, load_classifier, load_factory
from pursamere.method.adapter import NORMALIZATIONS, ClassifierAdapter
from pursamere.method.nets import ScoreNet, ScoreNetConfig
from pursamere.method.purify import InvalidInputError
from pursamere.method.weights import WeightsMismatchError

TINY_FILE = textwrap.dedent('''
    import torch.nn as nn

    class TinyNet(nn.Module):
        def __init__(self, width=4, classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.head = nn.Linear(width, classes)

        def forward(self, x):
            return self.head(self.bn(self.conv(x)).relu().mean((2, 3)))

    def tiny(width=4):
        return TinyNet(width)

    def not_a_module():
        return "a string"

    def broken():
        raise RuntimeError("no GPU here")

    def five_classes():
        return TinyNet(4, classes=5)

    NUMBER = 3
''')


class Recorder(nn.Module):
    """Logits = a fixed linear map of the input; remembers the input it saw."""

    def __init__(self, d=3 * 8 * 8, classes=10):
        super().__init__()
        self.lin = nn.Linear(d, classes)
        self.seen = None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.lin(x.flatten(1))


@pytest.fixture()
def factory_file(tmp_path):
    path = tmp_path / "user_models_file.py"
    path.write_text(TINY_FILE)
    return path


def test_normalisation_is_applied_per_channel():
    mean, std = NORMALIZATIONS["imagenet"]
    rec = Recorder()
    clf = ClassifierAdapter(rec, mean, std)
    x = torch.rand(2, 3, 8, 8)
    clf(x)
    want = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(rec.seen, want, atol=1e-6)
    assert float(rec.seen[:, 0].mean()) == pytest.approx(float(((x[:, 0] - 0.485) / 0.229).mean()), abs=1e-5)
    ClassifierAdapter(rec)(x)
    assert torch.equal(rec.seen, x)  # no normalisation: the [0, 1] image as it is


def test_resize_is_bilinear_and_differentiable():
    rec = Recorder(d=3 * 8 * 8)
    clf = ClassifierAdapter(rec, input_size=(8, 8))
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = clf(x)
    assert rec.seen.shape == (2, 3, 8, 8)
    assert torch.allclose(rec.seen, F.interpolate(x.detach(), size=(8, 8), mode="bilinear", align_corners=False))
    (g,) = torch.autograd.grad(logits[:, 3].sum(), x)
    assert g.shape == x.shape and float(g.abs().sum()) > 0
    # exact input gradients through resize + normalise (float64 finite differences)
    small = ClassifierAdapter(Recorder(d=3 * 4 * 4).double(), (0.5, 0.4, 0.3), (0.2, 0.3, 0.4), input_size=4)
    xd = torch.rand(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(small, (xd,))


def test_the_model_is_frozen_in_eval_mode():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(10))
    net(torch.rand(2, 3, 8, 8))  # materialise the lazy layer
    clf = ClassifierAdapter(net).train()
    assert not clf.training and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    x = torch.rand(4, 3, 8, 8)
    before = net[1].running_mean.clone()
    assert torch.equal(clf(x), clf(x))  # dropout off
    assert torch.equal(net[1].running_mean, before)  # batch-norm statistics untouched


def test_bad_adapter_settings_and_outputs_are_refused():
    with pytest.raises(ValueError, match="both mean and std"):
        ClassifierAdapter(Recorder(), mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="3 channels but std has 2"):
        ClassifierAdapter(Recorder(), (0.5, 0.5, 0.5), (0.2, 0.2))
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        ClassifierAdapter(Recorder(), (0.5, 0.5, 0.5), (0.2, 0.0, 0.2))
    with pytest.raises(TypeError, match="wraps a torch.nn.Module"):
        ClassifierAdapter(lambda x: x)
    with pytest.raises(InvalidInputError, match="normalises 3 channels, got images with 1"):
        ClassifierAdapter(Recorder(), *NORMALIZATIONS["cifar10"])(torch.rand(2, 1, 8, 8))
    with pytest.raises(InvalidInputError, match=r"returned shape \(2, 10\), expected logits \(2, 7\)"):
        ClassifierAdapter(Recorder(), num_classes=7)(torch.rand(2, 3, 8, 8))

    class Pair(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10], None

    with pytest.raises(InvalidInputError, match="returned a tuple"):
        ClassifierAdapter(Pair())(torch.rand(2, 3, 8, 8))


def test_a_factory_file_and_its_weights_round_trip(factory_file, tmp_path):
    torch.manual_seed(0)
    fn = load_factory(f"{factory_file}:tiny")
    trained = fn(width=6)
    trained.bn.running_mean.uniform_()  # buffers travel too
    x = torch.rand(3, 3, 32, 32)
    mean, std = NORMALIZATIONS["cifar10"]
    want = trained.eval()((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    from safetensors.torch import save_file

    # as training scripts save it: nested, DataParallel's prefix, numpy numbers beside (data, allowed by name)
    torch.save({"epoch": 3, "best_acc": np.float64(0.93), "curve": np.zeros(4, dtype=np.float32),
                "state_dict": {"module." + k: v for k, v in trained.state_dict().items()}}, tmp_path / "w.pth")
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    for weights in ("w.pth", "w.safetensors"):
        spec = ClassifierSpec(f"{factory_file}:tiny", weights=str(tmp_path / weights), normalization="cifar10",
                              factory_kwargs={"width": 6})
        clf = load_classifier(spec)
        assert isinstance(clf, ClassifierAdapter) and not clf.training
        assert torch.allclose(clf(x), want, atol=1e-6), weights


def test_a_module_factory_and_a_resized_input():
    spec = ClassifierSpec("pursamere.method.nets:SmallCNN", factory_kwargs={"image_shape": (3, 8, 8)},
                          input_size=(8, 8), normalization="imagenet")
    clf = load_classifier(spec, image_shape=(3, 32, 32))
    assert clf(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # inside the pipeline: classify purified images, gradients reach the input
    pur = Purifier(ScoreNet(ScoreNetConfig((3, 32, 32), (8, 16), 1, 4)).eval(),
                   PurifyConfig(eps_pur=8 / 255, n_levels=2, steps_per_level=1, sigma_max=0.2, sigma_min=0.05))
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(clf(pur.unrolled(x)).logsumexp(1).sum(), x)
    assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0


def test_every_bad_input_gets_one_clear_error(factory_file, tmp_path):
    def fails(exc, match, **spec):
        with pytest.raises(exc, match=match) as err:
            load_classifier(ClassifierSpec(**spec))
        assert "\n" not in str(err.value)

    fails(ValueError, "must look like", factory="models.py")
    fails(FileNotFoundError, "no factory file", factory=str(tmp_path / "absent.py") + ":fn")
    fails(ValueError, "no module named 'no_such_package_xyz'", factory="no_such_package_xyz.models:fn")
    fails(ValueError, r"has no function 'wrn' \(it defines: TinyNet, broken, five_classes", factory=f"{factory_file}:wrn")
    fails(ValueError, "'NUMBER' is a int, not a function", factory=f"{factory_file}:NUMBER")
    fails(ValueError, "returned a str, not a torch.nn.Module", factory=f"{factory_file}:not_a_module")
    fails(ValueError, "raised RuntimeError: no GPU here", factory=f"{factory_file}:broken")
    fails(ValueError, r"returns shape \(2, 5\) on a probe batch of 2 images, expected \(2, 10\)|expected logits \(2, 10\)",
          factory=f"{factory_file}:five_classes")
    fails(FileNotFoundError, "no weights file", factory=f"{factory_file}:tiny", weights=str(tmp_path / "absent.pt"))
    fails(ValueError, "unknown normalization 'imagenet21k'", factory=f"{factory_file}:tiny", normalization="imagenet21k")
    bad = tmp_path / "bad_syntax.py"
    bad.write_text("def f(:\n")
    fails(ValueError, "importing the factory file .* failed: SyntaxError", factory=f"{bad}:f")

    wrong = load_factory(f"{factory_file}:tiny")(width=8).state_dict()  # another width
    wrong["extra.weight"] = torch.zeros(1)
    del wrong["head.bias"]
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(WeightsMismatchError) as err:
        load_classifier(ClassifierSpec(f"{factory_file}:tiny", weights=str(tmp_path / "wrong.pt")))
    msg = str(err.value)
    assert "missing keys: head.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "shape mismatches (file vs model): bn.bias (8,) vs (4,)" in msg and "(7 in all)" in msg

    torch.save({"model": load_factory(f"{factory_file}:tiny")()}, tmp_path / "pickled.pt")  # a whole module object
    fails(ValueError, "holds a Python object .* will not unpickle", factory=f"{factory_file}:tiny", weights=str(tmp_path / "pickled.pt"))
    torch.save({"state_dict": wrong, "notes": np.array([1, "x", None], dtype=object)}, tmp_path / "objects.pt")
    fails(ValueError, "numpy object arrays or other objects", factory=f"{factory_file}:tiny", weights=str(tmp_path / "objects.pt"))
    torch.save({"epoch": 1, "weights_here": {"a": torch.zeros(1)}}, tmp_path / "nested.pt")
    fails(ValueError, "none of the usual entries .*name the entry with state_key", factory=f"{factory_file}:tiny",
          weights=str(tmp_path / "nested.pt"))
    fails(ValueError, "has no entry 'ema'", factory=f"{factory_file}:tiny", weights=str(tmp_path / "nested.pt"), state_key="ema")
    assert list(classifier_state_from_file(tmp_path / "nested.pt", "weights_here")) == ["a"]


def test_a_classifier_without_input_gradients_is_refused(tmp_path):
    path = tmp_path / "nograd.py"
    path.write_text(textwrap.dedent('''
        import torch, torch.nn as nn
        class Frozen(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(3 * 32 * 32, 10)
            def forward(self, x):
                with torch.no_grad():
                    return self.lin(x.flatten(1))
        def make():
            return Frozen()
    '''))
    with pytest.raises(ValueError, match="no gradient with respect to its input"):
        load_classifier(ClassifierSpec(f"{path}:make"))


def test_the_book_examples_load_as_documented(tmp_path):
    # the factory files shown in book/paper_models.md, run as a reader would (random weights)
    import re
    from pathlib import Path

    from safetensors.torch import save_file

    page = (Path(__file__).parent.parent / "book" / "paper_models.md").read_text()
    files = {b.splitlines()[0][2:]: b for b in re.findall(r"```python\n(.*?)```", page, re.S) if b.startswith("# ") and b.splitlines()[0].endswith(".py")}
    assert set(files) == {"my_models.py", "rb_wrn.py"}
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    resnet = load_factory(f"{tmp_path / 'my_models.py'}:resnet18_cifar10")()
    assert sum(p.numel() for p in resnet.parameters()) == 11_181_642  # torchvision's resnet18(num_classes=10)
    save_file(resnet.state_dict(), str(tmp_path / "resnet18.safetensors"))
    clf = load_classifier(ClassifierSpec(f"{tmp_path / 'my_models.py'}:resnet18_cifar10", weights=str(tmp_path / "resnet18.safetensors"),
                                         normalization="imagenet", input_size=(224, 224)))
    assert clf(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    wrn = load_factory(f"{tmp_path / 'rb_wrn.py'}:wrn_28_10")()
    assert sum(p.numel() for p in wrn.parameters()) == 36_479_194  # WRN-28-10
    torch.save({"state_dict": {"module." + k: v for k, v in wrn.state_dict().items()}}, tmp_path / "Standard.pt")
    clf = load_classifier(ClassifierSpec(f"{tmp_path / 'rb_wrn.py'}:wrn_28_10", weights=str(tmp_path / "Standard.pt"), normalization="none"))
    assert torch.equal(clf.model.fc.weight, wrn.fc.weight)
