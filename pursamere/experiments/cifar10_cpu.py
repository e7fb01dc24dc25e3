"""CIFAR-10 on a CPU: cached data, the shipped models and the ``cifar10-cpu`` preset's values.

The data are the 60,000 JPEG images of ``../shared/data/cifar10-jpeg`` (or any folder with the
same ``{train,test}.tar.gz`` layout). Decoding them takes about a minute, so the decoded uint8
arrays are cached in one ``.npz`` per split, keyed by the archive's SHA-256 (a changed archive
is decoded afresh). The cache is derived data and lives outside git (``runs/``).

The trained models ship as safetensors under ``weights/cifar10/`` (see :mod:`pursamere.experiments.weights`);
:func:`load_classifier` and :func:`load_score_net` rebuild them from the manifest's
architecture and verify their checksums.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..io import atomic_write_bytes
from ..method.baselines import ADPConfig, DiffPureConfig
from ..method.fastcifar import FastCifarConfig, FastCifarNet
from ..method.nets import ScoreNet, ScoreNetConfig
from ..method.purify import PurifyConfig
from ..method.train import ScoreTrainConfig
from ..evaluation.attacks import Threat
from .data import DataError, load_cifar10_jpeg
from .weights import load_weights

__all__ = ["DEFAULT_ROOT", "DEFAULT_CACHE", "cifar10_uint8", "cifar10_float", "validation_indices", "CLASSIFIER",
           "ADVERSARIAL", "EQ17", "SCORE_NET", "SCORE_SIGMAS", "SCORE_TRAIN", "PURIFY", "Cifar10Cpu", "CIFAR10_CPU",
           "load_classifier", "load_score_net"]

DEFAULT_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg"
DEFAULT_CACHE = Path("runs") / "cache" / "cifar10-jpeg"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def cifar10_uint8(split: str = "train", root=DEFAULT_ROOT, cache=DEFAULT_CACHE) -> tuple[np.ndarray, np.ndarray]:
    """The decoded images of one split as uint8 ``(N, 3, 32, 32)`` and int64 labels, cached.

    Args:
        split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
        root: the folder holding ``{split}.tar.gz`` (and ``SHA256SUMS``).
        cache: folder for the decoded arrays; ``None`` decodes every time.
    Returns:
        ``(images, labels)``: numpy arrays in the archive's fixed order (class, then file name).
    """
    root = Path(root).expanduser()
    archive = root / f"{split}.tar.gz"
    if not archive.is_file():
        raise DataError(f"no {archive}: expected CIFAR-10 as {split}/<class>/NNNN.jpg packed in {split}.tar.gz")
    key = _sha256(archive)
    target = None if cache is None else Path(cache) / f"{split}-{key[:16]}.npz"
    if target is not None and target.is_file():
        with np.load(target, allow_pickle=False) as z:
            if str(z["sha256"]) == key:
                return z["images"], z["labels"]
    x, y = load_cifar10_jpeg(root, split=split)
    images = torch.round(x * 255.0).to(torch.uint8).numpy()  # exact: the loader divided uint8 by 255
    labels = y.numpy()
    if target is not None:
        buf = io.BytesIO()
        np.savez(buf, images=images, labels=labels, sha256=np.array(key))
        atomic_write_bytes(target, buf.getvalue())
    return images, labels


def cifar10_float(split: str = "test", root=DEFAULT_ROOT, cache=DEFAULT_CACHE, limit: Optional[int] = None):
    """Float32 images in [0, 1] (NCHW) and int64 labels of one split, from :func:`cifar10_uint8`."""
    images, labels = cifar10_uint8(split, root, cache)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return torch.from_numpy(images).float().div_(255.0), torch.from_numpy(labels).long()


# ------------------------------------------------------------------------------------ models
# The clean classifier: airbench93's widths (0.57M parameters), trained longer than airbench93's
# 11 epochs because the CPU makes a narrow net cheap per epoch. Chosen by measurement (2 cores,
# benchmarks/bench_fastcifar.py): ≈413 images/s unshared against ≈126 for airbench94's widths,
# so 14 epochs fit in ≈28 minutes unshared (airbench94's widths would get ≈4.5 epochs).
CLASSIFIER = FastCifarConfig(widths=(64, 128, 128), epochs=14.0)
#: The adversarially trained baseline: the same net, FGSM with a random start (Wong et al. 2020) at
#: ℓ∞ 8/255 with a step of ε (not their 1.25ε), no label smoothing, and a first layer that does not whiten.
#: Why: airbench's whitening layer (ε = 5e-4 on the patch covariance's eigenvalues) scales the
#: highest-frequency patch directions by up to 39× (the mean-colour one by 0.29), where natural images
#: have little energy; after it an 8/255 sign perturbation is 2–10× the images' own signal in those
#: channels (measured on 2,000 test images). Three single-step attempts with it failed (book/data/cifar10-cpu-adversarial-attempts/:
#: FGSM-RS at the clean rate, PGD-10 0.0% after one epoch; N-FGSM at rates 11.5 and 2.3, which trains on
#: noise up to 3ε and ended with clean accuracy 12–32%). With whiten_eps = 1 every eigen-direction is
#: scaled by at most 1/√(λ+1) ≤ 1, i.e. a fixed orthogonal-like projection; a 2-epoch probe on 20,480
#: training images then learned without collapse (clean 33%, PGD-10 18% on 200 test images).
ADVERSARIAL = FastCifarConfig(widths=(64, 128, 128), epochs=10.0, lr=2.3, whiten_eps=1.0, label_smoothing=0.0,
                              adv_eps=8 / 255, adv_step=1.0, adv_method="fgsm-rs")
#: The eq.-17 classifier: the same recipe on clean + ERE-descent-purified training images.
EQ17 = CLASSIFIER

# The score model: the package's U-Net s(x, σ) = f(x)/σ. Four levels (32, 16, 8, 4 px) at widths
# 32-64-64-64, one block each: 0.70M parameters. The 4×4 level adds about 3% of the FLOPs of the
# 0.51M three-level net (the reference, ≈114 passes/s unshared) and doubles the receptive
# field, which the σ ≈ 0.3 end of purification needs; wider nets (1.1M: 48-96-96) cost about 2×
# per pass, and every purification is 48 passes per image (K = 12, M = 4).
# benchmarks/bench_cifar10_score.py measures them (channels_last: 1.3–1.5× faster on CPU).
SCORE_NET = ScoreNetConfig((3, 32, 32), (32, 64, 64, 64), 1, 8)
# σ ladder (σ_1, σ_L, L) focused on purification's range: Algorithm 1 and the baselines use σ
# from about 0.3 (ADP's start noise 0.25, DiffPure's σ* ≈ 0.17) down to 0.01. NCSNv2's σ_1 = 50
# serves sampling from noise, which purification never does, so the ladder stops at 0.5.
SCORE_SIGMAS = (0.5, 0.01, 20)
# 6,000 Adam steps of 128 images (≈15 passes over the training set): ≈1.3 h at the 169 images/s measured at load 2.
SCORE_TRAIN = ScoreTrainConfig(steps=6000, batch_size=128, lr=1e-3, ema_rate=0.999, checkpoint_every=100, seed=0)

# Algorithm 1's schedule for CIFAR-10 on a CPU: from the sweep of scripts/train_cifar10.py sweep
# (validation images, plain classifier, BPDA ℓ∞ 8/255); see weights/README.md for its table.
PURIFY = PurifyConfig(eps_pur=12 / 255, norm="inf", rho=0.0, m=4, antithetic=True, sigma_max=0.25, sigma_min=0.01,
                      n_levels=12, steps_per_level=1, lr_max=0.01, lr_min=0.002, seed=0)


@dataclass(frozen=True)
class Cifar10Cpu:
    """The values of the ``cifar10-cpu`` preset (shipped weights; the lead wires them into presets.py)."""

    name: str = "cifar10-cpu"
    data: str = "cifar10-jpeg"  # ../shared/data/cifar10-jpeg, or the user's folder of the same layout
    data_seed: int = 0
    validation_size: int = 128  # test images for tuning sweeps (validation_indices), never in the tables
    score_net: ScoreNetConfig = SCORE_NET
    sigma_first: float = SCORE_SIGMAS[0]
    sigma_last: float = SCORE_SIGMAS[1]
    n_sigmas: int = SCORE_SIGMAS[2]
    score_train: ScoreTrainConfig = SCORE_TRAIN
    classifier: FastCifarConfig = CLASSIFIER
    adversarial: FastCifarConfig = ADVERSARIAL
    weights: tuple = (("classifier", "cifar10/classifier"), ("adversarial", "cifar10/adversarial"),
                      ("eq17", "cifar10/eq17"), ("score", "cifar10/score"))
    purify: PurifyConfig = PURIFY  # ERE descent (SAM off) at the middle ε_pur; the paper's SAM rows set ρ = ε_pur/2
    eps_pur: tuple = (8 / 255, 12 / 255, 16 / 255)  # the paper's Table 1/2 radii
    threats: tuple = (("inf", 8 / 255), (2, 0.5), (1, 12.0))  # the paper's budgets
    adp: ADPConfig = ADPConfig(sigma_noise=0.25, steps=10, sigma_fix=0.01, n_runs=4)
    diffpure: DiffPureConfig = DiffPureConfig(sigma_min=0.01, n_levels=20)
    train_fraction_purified: float = 0.0  # share of the 50,000 training images purified for eq. 17 (set when trained)

    def weights_name(self, role: str) -> str:
        return dict(self.weights)[role]


CIFAR10_CPU = Cifar10Cpu()


def validation_indices(n_test: int = 10_000, data_seed: int = CIFAR10_CPU.data_seed,
                       size: int = CIFAR10_CPU.validation_size) -> torch.Tensor:
    """Test images set aside for tuning (the rule of pipeline.validation_indices: seed data_seed + 1)."""
    return torch.randperm(n_test, generator=torch.Generator().manual_seed(data_seed + 1))[:size]


def load_classifier(role: str = "classifier", root=None) -> FastCifarNet:
    """A shipped classifier (``"classifier"``, ``"adversarial"`` or ``"eq17"``), verified, in eval mode."""
    state, meta = load_weights(CIFAR10_CPU.weights_name(role), root)
    net = FastCifarNet(FastCifarConfig.from_dict(meta["architecture"]))
    net.load_state_dict(state)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(memory_format=torch.channels_last).eval()


def load_score_net(root=None) -> ScoreNet:
    """The shipped score model (EMA weights), verified, in eval mode, ``channels_last`` (1.3–1.5× faster on CPU)."""
    state, meta = load_weights(CIFAR10_CPU.weights_name("score"), root)
    a = meta["architecture"]
    net = ScoreNet(ScoreNetConfig(tuple(a["image_shape"]), tuple(a["channels"]), a["blocks"], a["groups"]))
    net.load_state_dict(state)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(memory_format=torch.channels_last).eval()


# --------------------------------------------------------------------------- the recorded evaluation
#: Shipped classifiers by the id the defences use: the clean net, FGSM-RS adversarial training, eq. 17.
CLASSIFIER_IDS = {"plain": "classifier", "adversarial": "adversarial", "eq17": "eq17"}


def shipped_roles(root=None) -> tuple:
    """The classifier ids whose weights are shipped (the score model must be, too)."""
    from .weights import manifest

    have = set(manifest(root))
    return tuple(cid for cid, role in CLASSIFIER_IDS.items() if CIFAR10_CPU.weights_name(role) in have)


def load_artifacts(data_root=None, cache=DEFAULT_CACHE, log=print, root=None):
    """The ``cifar10-cpu`` preset's models: the shipped, verified weights (nothing is trained here) and the
    10,000 test images (the training images are not needed to evaluate, so they are not decoded)."""
    from .artifacts import Artifacts
    from .data import CIFAR10_CLASSES, Split

    score = load_score_net(root)
    have = shipped_roles(root)
    classifiers = {cid: load_classifier(role, root) for cid, role in CLASSIFIER_IDS.items() if cid in have}
    x, y = cifar10_float("test", data_root or DEFAULT_ROOT, cache)
    empty = torch.zeros((0, *x.shape[1:]))
    log(f"cifar10-cpu: shipped models loaded and verified (score net + {', '.join(classifiers)}); retrain them with "
        "scripts/train_cifar10.py")
    return Artifacts(Split(empty, torch.zeros(0, dtype=torch.long), x, y, CIFAR10_CLASSES), score, classifiers, {},
                     {"weights": "shipped (weights/cifar10/, trained on the CPU by scripts/train_cifar10.py)"})


def table_protocol(preset, part: str = "key", n: Optional[int] = None, budget=None, have: tuple = ("plain",),
                   then=None):
    """The CIFAR-10 table of the ``cifar10-cpu`` preset, split in two parts on the same images.

    ``key`` (≥ 256 images): undefended, adversarial training (FGSM-RS), PurSAMERE with the paper's SAM at
    the middle ε_pur, ERE descent (the sweep's purifier, SAM off) and DiffPure-style, at ℓ∞ 8/255; ERE
    descent and adversarial training also at ℓ2 0.5 and ℓ1 12. ``rest`` (≥ 128 images, a prefix of the
    key images): PurSAMERE at ε_pur 8 and 16 /255, adversarial training + ERE descent, ADP and both
    fixed-seed baselines. Rows whose classifier is not in ``have`` (shipped) are left out, and the
    protocol's description says so. Purifier rows sit in front of the eq.-17 classifier when it is
    shipped, else the clean one (said in each row's label).

    ``then`` (a :class:`~pursamere.evaluation.suite.Budget`, ``ensemble --then-steps``): after the suite, the
    whole suite again at that budget on the images it left, every attack cascaded (the convergence check of
    book chapter 7, as for digits), at ℓ∞ only: the ℓ1 suite already runs at twice the counts
    (:func:`~pursamere.evaluation.suite.threat_budget`), so its attacks would share the longer suite's names.
    A tuple of budgets runs one longer suite after another (``--then-steps 40,80``), each on what all before it left.
    """
    from ..evaluation.defences import Family
    from ..evaluation.suite import Role, ensemble_suite, threat_budget
    from .protocols import DefenceSpec, Images, Protocol, suite_then, then_budgets

    if part not in ("key", "rest", "demo"):
        raise ValueError(f"part must be 'key', 'rest' or 'demo', got {part!r}")
    cfg, mid = preset.purify, preset.purify.eps_pur
    pur_clf = "eq17" if "eq17" in have else "plain"
    on = "" if pur_clf == "eq17" else " (clean classifier)"
    every = (Role.GRAY_BOX, Role.BPDA, Role.APGD, Role.EXACT, Role.WARM_EXACT, Role.PARTIAL, Role.SQUARE)
    l2 = (Role.BPDA, Role.APGD, Role.EXACT, Role.WARM_EXACT, Role.PARTIAL, Role.SQUARE)
    l1 = (Role.BPDA, Role.APGD, Role.EXACT, Role.WARM_EXACT, Role.PARTIAL)  # Square is an ℓ∞/ℓ2 attack
    three, linf = {"inf": every, "2": l2, "1": l1}, {"inf": every}
    fe = lambda e: f"{round(e * 255)}/255"  # noqa: E731
    if part == "demo":  # `pursamere demo --preset cifar10-cpu`: the key rows that fit minutes on a CPU, ℓ∞ only
        defs = [DefenceSpec("undefended", "plain", family=Family.UNDEFENDED, attacks=linf),
                DefenceSpec("adversarial training (FGSM-RS)", "adversarial", family=Family.ADVERSARIAL_TRAINING, attacks=linf),
                DefenceSpec(f"PurSAMERE ρ=ε_pur/2 ε_pur={fe(mid)}{on}", pur_clf, cfg.paper_sam(), attacks=linf),
                DefenceSpec(f"ERE descent (no SAM) ε_pur={fe(mid)}{on}", pur_clf, cfg.sam_off(), attacks=linf)]
    elif part == "key":
        defs = [DefenceSpec("undefended", "plain", family=Family.UNDEFENDED, attacks=linf),
                DefenceSpec("adversarial training (FGSM-RS)", "adversarial", family=Family.ADVERSARIAL_TRAINING,
                            attacks=three),
                DefenceSpec(f"PurSAMERE ρ=ε_pur/2 ε_pur={fe(mid)}{on}", pur_clf, cfg.paper_sam(), attacks=linf, checks=True),
                DefenceSpec(f"ERE descent (no SAM) ε_pur={fe(mid)}{on}", pur_clf, cfg.sam_off(), attacks=three,
                            checks=True, examples=True),
                DefenceSpec(f"DiffPure-style{on}", pur_clf, preset.diffpure.replace(fixed_noise=False), attacks=linf)]
    else:
        defs = [DefenceSpec(f"PurSAMERE ρ=ε_pur/2 ε_pur={fe(e)}{on}", pur_clf, cfg.replace(eps_pur=e).paper_sam(),
                            attacks=linf) for e in preset.eps_pur if e != mid]
        defs += [DefenceSpec(f"adversarial training + ERE descent ε_pur={fe(mid)}", "adversarial", cfg.sam_off(), attacks=linf),
                 DefenceSpec(f"ADP{on}", pur_clf, preset.adp.replace(fixed_noise=False), attacks=linf),
                 DefenceSpec(f"ADP (fixed seed){on}", pur_clf, preset.adp.replace(fixed_noise=True), attacks=linf),
                 DefenceSpec(f"DiffPure-style (fixed seed){on}", pur_clf, preset.diffpure.replace(fixed_noise=True),
                             attacks=linf)]
    dropped = [d.label for d in defs if d.classifier not in have]
    defs = [d for d in defs if d.classifier in have]
    budget = budget or preset.ensemble.budget
    threats = tuple(Threat(k, v) for k, v in preset.threats.items() if (part != "demo" and then is None) or k == "inf")
    rungs = then_budgets(then)
    describe = (f"The standard ensemble at gPGD{budget.gpgd_steps}, BPDA{budget.bpda_steps}, APGD{budget.apgd_steps} "
                f"(CE, DLR, targeted over {budget.apgd_targets} classes), exact{budget.exact_steps} (random start and from "
                f"APGD-CE's end points), partial unrolling, Square{budget.square_queries} and APGD{budget.exact_steps} on the "
                f"exact gradient (from APGD-CE's end points, and targeted)"
                + (f", then targeted APGD{budget.apgd_steps} on the exact gradient"
                   if budget.apgd_steps > budget.exact_steps else "")
                + f"; EoT {budget.eot} against stochastic purifiers"
                + ("; at ℓ1 every count doubled (no Square there)" if any(str(t.norm) == "1" for t in threats) else "")
                + ". Models: the shipped CPU-trained weights of weights/cifar10/."
                + "".join(f" Then the whole suite again at {b.apgd_steps} steps ({b.exact_steps} on the exact gradient, "
                          f"Square{b.square_queries}) on the images {'it' if i == 0 else 'all before it'} left, every "
                          "attack cascaded, at ℓ∞ only" + (": the worst case is over both." if len(rungs) == 1 else ".")
                          for i, b in enumerate(rungs))
                + (" The worst case is over all of them." if len(rungs) > 1 else "")
                + (f" Left out (classifier not shipped): {', '.join(dropped)}." if dropped else ""))
    plan = {"part": part, "budget": dataclasses.asdict(budget), "left_out": dropped}
    if rungs:  # one longer suite as before (a dict), several as a list
        plan["then"] = dataclasses.asdict(rungs[0]) if len(rungs) == 1 else [dataclasses.asdict(b) for b in rungs]
    if any(t.norm == 1 for t in threats):
        plan["budget_l1"] = dataclasses.asdict(threat_budget(budget, 1))
    return Protocol("cifar10-table", f"{preset.name}: CIFAR-10 ({part} rows), worst case per image", tuple(defs),
                    tuple(ensemble_suite(budget, threats)) if then is None else suite_then(budget, then), threats,
                    Images("table", n), batch_size=preset.ensemble.batch_size,
                    describe=describe, plan=plan,
                    check_plan=dataclasses.replace(preset.full, bpda_steps=budget.bpda_steps, check_steps=budget.exact_steps,
                                                   square_queries=budget.square_queries)
                    if part == "key" and then is None else None)  # the 40-step check reruns no obfuscation check
