"""A preset's trained models as a typed :class:`Artifacts` object, trained once and cached by fingerprint.

:func:`prepare` trains (or reuses from ``workdir``) the score net (DSM, eq. 6), the plain
classifier, the eq.-17 classifier (clean + purified training images) and the adversarially
trained ones (PGD-AT, TRADES). Every cache entry is checksummed and tied to the preset's settings
and the data, so a second run reuses it and a changed setting retrains.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..evaluation.attacks import Threat
from ..evaluation.defences import Defence
from ..io import config_hash, fingerprint, load_checkpoint, save_checkpoint
from ..method.baselines import ADP, ADPConfig, DiffPure, DiffPureConfig
from ..method.nets import ScoreNet, SmallCNN, WideResNet
from ..method.purify import Purifier, PurifyConfig
from ..method.train import TRADES, PGDAdversary, accuracy, load_score_net, train_classifier, train_score
from .data import Split, load_split

__all__ = ["Artifacts", "prepare", "build_classifier", "purify_batched", "load_trained_score", "CLASSIFIERS",
           "model_settings", "ship", "load_shipped", "user_models", "load_user_models", "train_single_classifier"]

#: The classifiers a preset trains, by id: what each is, and its cache file.
CLASSIFIERS = {"plain": "classifier_plain.pt", "eq17": "classifier_eq17.pt", "pgd-at": "classifier_adv.pt",
               "trades": "classifier_trades.pt"}


@dataclass
class Artifacts:
    """The trained models of a preset and the data they were trained on."""

    split: Split
    score: nn.Module
    classifiers: dict  # id ("plain", "eq17", "pgd-at", "trades") → nn.Module in eval mode
    times: dict = field(default_factory=dict)  # seconds spent per model (0 when reused)
    source: dict = field(default_factory=lambda: {"weights": "trained"})  # shipped: each file's SHA-256

    def classifier(self, cid: str) -> nn.Module:
        if cid not in self.classifiers:
            raise ValueError(f"no {cid!r} classifier among the trained models {sorted(self.classifiers)}")
        return self.classifiers[cid]

    def to(self, device) -> "Artifacts":
        self.score = self.score.to(device)
        self.classifiers = {k: v.to(device) for k, v in self.classifiers.items()}
        return self

    def fingerprints(self) -> dict:
        """The weights behind every row: score net and each classifier."""
        out = {"score": fingerprint(*self.score.state_dict().values())}
        out.update({k: fingerprint(*m.state_dict().values()) for k, m in self.classifiers.items()})
        return out

    def defence(self, spec) -> Defence:
        """Build a :class:`~pursamere.experiments.protocols.DefenceSpec` on these models."""
        cfg = spec.purifier
        if cfg is None:
            purifier = None
        elif isinstance(cfg, PurifyConfig):
            purifier = Purifier(self.score, cfg)
        elif isinstance(cfg, ADPConfig):
            purifier = ADP(self.score, cfg)
        elif isinstance(cfg, DiffPureConfig):
            purifier = DiffPure(self.score, cfg)
        else:
            raise TypeError(f"defence {spec.label!r}: unknown purifier config {type(cfg).__name__}")
        return Defence(spec.label, self.classifier(spec.classifier), purifier, family=spec.kind(),
                       classifier_id=spec.classifier)


def build_classifier(preset, image_shape, num_classes: int = 10) -> nn.Module:
    if preset.classifier == "smallcnn":
        return SmallCNN(image_shape, num_classes)
    if preset.classifier.startswith("wrn-"):
        _, depth, widen = preset.classifier.split("-")
        return WideResNet(int(depth), int(widen), num_classes, in_channels=image_shape[0])
    raise ValueError(f"unknown classifier {preset.classifier!r}")


def purify_batched(purifier, x: torch.Tensor, batch_size: int = 128, desc: str = "purify", progress: bool = True):
    """Purify a large set in batches (results do not depend on the batching: batch invariance)."""
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, x.shape[0], batch_size), desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        out.append(purifier(x[i:i + batch_size]))
    return torch.cat(out)


def _cached_model(path: Path, meta: dict, build, fresh: bool):
    """Load a cached module whose meta matches, or build (train) it and cache it."""
    if path.exists() and not fresh:
        ck = load_checkpoint(path)
        if ck.get("meta") == meta:
            module = build(train=False)
            module.load_state_dict(ck["state"])
            return module.eval(), True
    module = build(train=True)
    save_checkpoint(path, {"state": module.state_dict(), "meta": meta})
    return module.eval(), False


def load_trained_score(preset, workdir: Path) -> ScoreNet:
    """The preset's trained score net (EMA weights) from ``workdir``; clear error when missing."""
    path = Path(workdir) / preset.name / "score.pt"
    if not path.exists():
        raise FileNotFoundError(f"no trained score net at {path}: run `pursamere demo --preset {preset.name}` "
                                f"or `pursamere train-score --preset {preset.name}` first")
    return load_score_net(ScoreNet(preset.score_net), path)


def _score_net(preset, split, work: Path, fresh: bool, progress: bool, device: str, log) -> nn.Module:
    """Denoising score matching (eq. 6), resumable; a checkpoint made with other settings is retrained."""
    score_path = work / "score.pt"
    if fresh and score_path.exists():
        score_path.unlink()
    torch.manual_seed(preset.score_train.seed)
    net = ScoreNet(preset.score_net)
    if score_path.exists():
        ck = load_checkpoint(score_path)
        want = {"config": dataclasses.asdict(preset.score_train), "sigmas": [float(s) for s in preset.sigmas().float()],
                "data": fingerprint(split.x_train), "n_params": sum(p.numel() for p in net.parameters())}
        if ck["meta"] != want:  # other settings: start again rather than reuse or resume a different net
            log(f"score net: {score_path} was trained with other settings; retraining")
            score_path.unlink()
        elif ck["step"] >= preset.score_train.steps:
            log(f"score net: reused {score_path}")
            return load_score_net(net, score_path).to(device).eval()
    score, losses = train_score(net, split.x_train, preset.sigmas(), preset.score_train, checkpoint=score_path,
                                resume=True, progress=progress, device=device)
    log(f"score net: {preset.score_train.steps} DSM steps, final loss {sum(losses[-50:]) / len(losses[-50:]):.3f}")
    return score.to(device).eval()


def model_settings(preset) -> dict:
    """Everything a preset's trained models depend on (a shipped model is used only when these match)."""
    return {"score_net": dataclasses.asdict(preset.score_net), "score_train": dataclasses.asdict(preset.score_train),
            "sigmas": [preset.sigma_first, preset.sigma_last, preset.n_sigmas], "classifier": preset.classifier,
            "classifier_train": dataclasses.asdict(preset.classifier_train),
            "eq17": {"purify": dataclasses.asdict(preset.purify.sam_off()), "fraction": preset.train_fraction_purified},
            "adversarial": {"steps": preset.adv_train_steps, "eps": preset.threats["inf"], "trades_beta": preset.trades_beta},
            "data": preset.data, "data_seed": preset.data_seed}


def ship(preset, arts: Artifacts, command: str, root=None) -> list:
    """Write ``arts``' models as ``weights/<preset>/<model>.safetensors`` with their manifest entries."""
    from .weights import save_weights

    split = arts.split
    common = {"preset": preset.name, "settings_hash": config_hash(model_settings(preset)), "command": command,
              "data": fingerprint(split.x_train, split.y_train), "train_seconds": {k: round(v, 1) for k, v in arts.times.items()}}
    entries = [save_weights(f"{preset.name}/score", arts.score, dict(common, kind="ScoreNet", n_params=sum(
        p.numel() for p in arts.score.parameters())), root=root)]
    for cid, clf in arts.classifiers.items():
        entries.append(save_weights(f"{preset.name}/{cid}", clf, dict(common, kind=preset.classifier,
                                                                      test_accuracy=accuracy(clf, split.x_test, split.y_test)),
                                    root=root))
    return entries


def load_shipped(preset, data_root: Optional[str] = None, log=print, root=None) -> Artifacts:
    """The preset's shipped models (``weights/``), checked: SHA-256 and tensor fingerprints (by the manifest),
    the preset's current settings and the data they were trained on."""
    from .weights import load_weights, manifest

    split = load_split(preset, data_root)
    want, data = config_hash(model_settings(preset)), fingerprint(split.x_train, split.y_train)

    def get(name, module):
        state, meta = load_weights(f"{preset.name}/{name}", root)
        if meta.get("settings_hash") != want:
            raise ValueError(f"shipped weights {preset.name}/{name} were trained with other settings than the "
                             f"{preset.name} preset has now; retrain with `{meta.get('command', 'pursamere train-score')}` "
                             "or run with --weights train")
        if meta.get("data") != data:
            raise ValueError(f"shipped weights {preset.name}/{name} were trained on other data than {preset.data}")
        module.load_state_dict(state, strict=True)
        return module.eval()

    score = get("score", ScoreNet(preset.score_net))
    shape = tuple(split.x_train.shape[1:])
    ids = ["plain", "eq17"] + (["pgd-at", "trades"] if preset.adv_train_steps >= 1 else [])
    classifiers = {cid: get(cid, build_classifier(preset, shape)) for cid in ids}
    log(f"{preset.name}: shipped models loaded and verified (score net + {', '.join(ids)})")
    entries = manifest(root)
    files = {n: entries[f"{preset.name}/{n}"]["sha256"] for n in ["score", *ids]}
    return Artifacts(split, score, classifiers, {}, {"weights": "shipped", "sha256": files})


def user_models(preset, score_checkpoint: Optional[str], classifier, image_shape=(3, 32, 32)):
    """``(score, info, classifier)`` of a ``models="user"`` preset: the official NCSNv2 checkpoint and the
    user's classifier (a :class:`~pursamere.experiments.user_models.ClassifierSpec`), read as data."""
    from ..method.ncsnv2 import load_ncsnv2
    from .user_models import load_classifier

    if not score_checkpoint:
        raise ValueError(f"preset {preset.name} purifies with the official NCSNv2 {preset.ncsnv2_config} checkpoint: "
                         "download it from the NCSNv2 release and pass --score-checkpoint PATH (nothing is downloaded)")
    if classifier is None:
        raise ValueError(f"preset {preset.name} needs your classifier: --classifier FILE.py:FN "
                         "[--classifier-weights W --normalization cifar10]")
    score, info = load_ncsnv2(score_checkpoint, preset.ncsnv2_config)
    return score, info, load_classifier(classifier, image_shape=image_shape)


def load_user_models(preset, score_checkpoint: Optional[str], classifier, data_root: Optional[str] = None,
                     log=print) -> Artifacts:
    """A ``models="user"`` preset's :class:`Artifacts`: :func:`user_models` on the preset's data; nothing is trained."""
    score, info, clf = user_models(preset, score_checkpoint, classifier, preset.image_shape)
    split = load_split(preset, data_root)
    log(f"{preset.name}: NCSNv2 from {score_checkpoint} ({info.get('weights', 'weights')}), classifier {classifier.factory}")
    return Artifacts(split, score, {"plain": clf, "eq17": clf}, {},
                     {"weights": "user", "score_checkpoint": str(score_checkpoint), "classifier": classifier.factory})


def prepare(preset, workdir: str | Path, fresh: bool = False, progress: bool = True, device: str = "cpu",
            log=print, data_root: Optional[str] = None, weights: str = "train", score_checkpoint: Optional[str] = None,
            classifier=None) -> Artifacts:
    """Train (or reuse) the preset's score net and classifiers; see the module docstring.

    ``weights="shipped"`` loads the verified models of ``weights/`` instead of training
    (:func:`load_shipped`): any row of the book can be re-run exactly with them. A ``models="user"``
    preset loads ``score_checkpoint`` and ``classifier`` instead (:func:`load_user_models`); a
    ``models="shipped"`` preset (``cifar10-cpu``) always loads its shipped weights.
    """
    if preset.models == "user":
        return load_user_models(preset, score_checkpoint, classifier, data_root, log)
    if preset.models == "shipped":  # trained by scripts/train_cifar10.py, evaluated from weights/ only
        from .cifar10_cpu import load_artifacts

        return load_artifacts(data_root, log=log)
    if weights == "shipped":
        return load_shipped(preset, data_root, log)
    if weights != "train":
        raise ValueError(f"weights must be 'train' or 'shipped', got {weights!r}")
    work = Path(workdir) / preset.name
    work.mkdir(parents=True, exist_ok=True)
    split = load_split(preset, data_root)
    times = {}

    # 1. score net: denoising score matching (eq. 6), resumable
    t0 = time.perf_counter()
    score = _score_net(preset, split, work, fresh, progress, device, log)
    times["score_net"] = time.perf_counter() - t0
    shape, data_fp = tuple(split.x_train.shape[1:]), fingerprint(split.x_train, split.y_train)
    meta = {"preset": config_hash(dataclasses.asdict(preset.classifier_train)), "arch": preset.classifier, "data": data_fp}
    classifiers = {}

    def train(cid: str, key_meta: dict, label: str, **kw):
        t0 = time.perf_counter()

        def build(train):
            torch.manual_seed(preset.classifier_train.seed)
            clf = build_classifier(preset, shape)
            if train:
                clf = train_classifier(clf, split.x_train, split.y_train, preset.classifier_train, device=device,
                                       progress=progress, **kw)
            return clf.to("cpu")

        classifiers[cid], reused = _cached_model(work / CLASSIFIERS[cid], key_meta, build, fresh)
        log(f"{label}: {'reused' if reused else 'trained'}; test accuracy "
            f"{accuracy(classifiers[cid], split.x_test, split.y_test):.3f}")
        times[f"classifier_{cid}"] = time.perf_counter() - t0

    # 2. plain classifier (the undefended row)
    train("plain", meta, "plain classifier")

    # 3. purified training set (Algorithm 1 with SAM OFF, eq. 17), cached
    t0 = time.perf_counter()
    pur_cfg = preset.purify.sam_off()
    n_pur = max(1, int(round(preset.train_fraction_purified * len(split.x_train))))
    pur_meta = {"config": config_hash(dataclasses.asdict(pur_cfg)), "score": fingerprint(*score.state_dict().values()),
                "data": data_fp, "n": n_pur}
    pur_path = work / "purified_train.pt"
    x_pur = None
    if pur_path.exists() and not fresh:
        ck = load_checkpoint(pur_path)
        if ck.get("meta") == pur_meta:
            x_pur = ck["x"]
    if x_pur is None:
        x_pur = split.x_train.clone()
        x_pur[:n_pur] = purify_batched(Purifier(score, pur_cfg), split.x_train[:n_pur], desc="purify train set (eq. 17)",
                                       progress=progress)
        save_checkpoint(pur_path, {"x": x_pur, "meta": pur_meta})
    times["purify_train"] = time.perf_counter() - t0

    # 4. classifier trained on clean + purified images (eq. 17)
    train("eq17", dict(meta, purified=pur_meta), "eq.-17 classifier", x_purified=x_pur)

    # 5. adversarially trained classifiers, the competition: PGD (Madry et al. 2018) and TRADES
    if preset.adv_train_steps >= 1:
        threat = Threat("inf", preset.threats["inf"])
        steps = preset.adv_train_steps
        train("pgd-at", dict(meta, adv={"steps": steps, "eps": threat.eps}), "PGD adversarial training classifier",
              adversary=PGDAdversary(threat, steps=steps))
        train("trades", dict(meta, trades={"steps": steps, "eps": threat.eps, "beta": preset.trades_beta}),
              "TRADES classifier", trades=TRADES(threat, steps=steps, beta=preset.trades_beta))
    return Artifacts(split, score.to("cpu"), classifiers, times)


def train_single_classifier(preset, kind: str, workdir, pgd_steps: int = 7, beta: float = 6.0, device: str = "cpu",
                            data_root: Optional[str] = None, n_check: int = 200) -> dict:
    """Train one classifier of the preset outside the cache (``kind``: "plain", "adv" for PGD-AT, "trades"),
    save it under ``workdir`` and check it with PGD-20 on ``n_check`` test images (``pursamere train-classifier``)."""
    from ..evaluation.attacks import pgd, robust_accuracy

    split = load_split(preset, data_root)
    threat = Threat("inf", preset.threats["inf"])
    kw = {"adv": {"adversary": PGDAdversary(threat, steps=pgd_steps)},
          "trades": {"trades": TRADES(threat, steps=pgd_steps, beta=beta)}, "plain": {}}[kind]
    label = {"adv": f"adversarial (PGD-{pgd_steps}, ℓ∞ {threat.eps:g})",
             "trades": f"TRADES (β = {beta:g}, {pgd_steps} steps, ℓ∞ {threat.eps:g})", "plain": "plain"}[kind]
    torch.manual_seed(preset.classifier_train.seed)
    clf = train_classifier(build_classifier(preset, tuple(split.x_train.shape[1:])), split.x_train, split.y_train,
                           preset.classifier_train, device=device, progress=True, **kw).cpu()
    path = Path(workdir) / preset.name / f"classifier_{kind}_cli.pt"
    save_checkpoint(path, {"state": clf.state_dict(), "meta": {"kind": label, "preset": preset.name}})
    n = min(n_check, len(split.x_test))
    x, y = split.x_test[:n], split.y_test[:n]
    return {"label": label, "path": path, "clean": accuracy(clf, split.x_test, split.y_test), "eps": threat.eps,
            "robust": robust_accuracy(clf, pgd(clf, x, y, threat, steps=20), y), "n": n}
