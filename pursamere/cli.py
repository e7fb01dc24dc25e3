"""The ``pursamere`` command: thin wrappers over the package (logic lives in the modules)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def cmd_demo(args) -> int:
    if args.toy:
        from .experiments.toydemo import run_toy_demo

        out = Path(args.out or f"results/toy/{_run_id()}")
        res = run_toy_demo(out)
        print(res["report"])
        print(f"wrote {out}/results.json, report.md, toy.png")
        return 0
    from .experiments.pipeline import run_demo  # the digits pipeline

    return run_demo(args)


def cmd_reproduce(args) -> int:
    """The preset's full protocol (all test images, long attacks), resumable."""
    from .experiments.pipeline import run_pipeline
    from .experiments.presets import get_preset

    preset = get_preset(args.preset)
    out = Path(args.out or f"results/{preset.name}/full")
    res = run_pipeline(preset, preset.full, args.workdir, out, fresh=args.fresh, device=args.device, data_root=args.data_root)
    print(res["table"])
    return 0


def cmd_train_score(args) -> int:
    from .experiments.pipeline import prepare
    from .experiments.presets import get_preset

    prepare(get_preset(args.preset), args.workdir, fresh=args.fresh, device=args.device, data_root=args.data_root)
    return 0


def cmd_train_classifier(args) -> int:
    """Train the preset's classifier, plainly or with PGD adversarial training (Madry et al.)."""
    import torch

    from .evaluation.attacks import Threat, pgd, robust_accuracy
    from .io import save_checkpoint
    from .experiments.pipeline import build_classifier, load_split
    from .experiments.presets import get_preset
    from .method.train import TRADES, PGDAdversary, accuracy, train_classifier

    if args.adversarial and args.trades:
        raise ValueError("choose one of --adversarial (PGD-AT) and --trades")
    preset = get_preset(args.preset)
    split = load_split(preset, args.data_root)
    threat = Threat("inf", preset.threats["inf"])
    adversary = PGDAdversary(threat, steps=args.pgd_steps) if args.adversarial else None
    trades = TRADES(threat, steps=args.pgd_steps, beta=args.beta) if args.trades else None
    torch.manual_seed(preset.classifier_train.seed)
    clf = train_classifier(build_classifier(preset, tuple(split.x_train.shape[1:])), split.x_train, split.y_train,
                           preset.classifier_train, adversary=adversary, trades=trades, device=args.device, progress=True).cpu()
    tag = "adv" if args.adversarial else ("trades" if args.trades else "plain")
    kind = {"adv": f"adversarial (PGD-{args.pgd_steps}, ℓ∞ {threat.eps:g})",
            "trades": f"TRADES (β = {args.beta:g}, {args.pgd_steps} steps, ℓ∞ {threat.eps:g})", "plain": "plain"}[tag]
    path = Path(args.workdir) / preset.name / f"classifier_{tag}_cli.pt"
    save_checkpoint(path, {"state": clf.state_dict(), "meta": {"kind": kind, "preset": preset.name}})
    n = min(args.n, len(split.x_test))
    x, y = split.x_test[:n], split.y_test[:n]
    rob = robust_accuracy(clf, pgd(clf, x, y, threat, steps=20), y)
    print(f"{kind} classifier → {path}: clean {accuracy(clf, split.x_test, split.y_test):.3f}, "
          f"PGD-20 ℓ∞ {threat.eps:g} robust {rob:.3f} (n = {n})")
    return 0


def cmd_evaluate(args) -> int:
    """Chosen defences × attacks × threats on the preset's trained models."""
    from .evaluation.attacks import Threat
    from .evaluation.runner import ATTACKS, evaluate, plot_results, render_table
    from .experiments.pipeline import build_defences, prepare
    from .experiments.presets import get_preset

    preset = get_preset(args.preset)
    arts = prepare(preset, args.workdir, device=args.device, data_root=args.data_root)
    defs = build_defences(preset, arts)
    if args.defences:
        want = [w.strip() for w in args.defences.split(",")]
        defs = [d for d in defs if any(d.name.lower().startswith(w.lower()) for w in want)]
        if not defs:
            raise ValueError(f"no defence matches {args.defences!r}")
    try:
        attacks = [ATTACKS[a.strip()] for a in args.attacks.split(",")]
    except KeyError as e:
        raise ValueError(f"unknown attack {e.args[0]!r}: choose from {sorted(ATTACKS)}") from None
    threats = []
    for t in args.threats.split(","):
        norm, _, eps = t.partition(":")
        threats.append(Threat(norm, float(eps) if eps else preset.threats[Threat(norm, 1.0).norm]))
    split = arts["split"]
    n = min(args.n, len(split.x_test))
    out = Path(args.out or f"results/{preset.name}/eval-{_run_id()}")
    res = evaluate(defs, attacks, threats, split.x_test[:n], split.y_test[:n], out)
    table = render_table(res, f"{preset.name}: n = {n}")
    from .io import atomic_write_text

    atomic_write_text(out / "table.md", table)
    plot_results(res, out / "robust_accuracy.png")
    print(table)
    return 0


def cmd_ensemble(args) -> int:
    """The attack ensemble (worst case per image) over ℓ∞ budgets, every defence."""
    import json

    from .experiments.presets import get_preset
    from .evaluation.suite import EnsemblePlan, run_ensemble

    preset = get_preset(args.preset)
    eps = tuple(float(e) for e in args.eps.split(",")) if args.eps else (preset.threats["inf"],)
    plan = EnsemblePlan(n_test=args.n, eps=eps, square_queries=args.square_queries)
    best = json.loads(args.best) if args.best else None
    if best is not None and not isinstance(best, dict):
        raise ValueError(f"--best must be a JSON object of purifier settings, got {args.best!r}")
    out = Path(args.out or f"results/{preset.name}/ensemble-{_run_id()}")
    only = tuple(o.strip() for o in args.only.split(",") if o.strip())
    res = run_ensemble(preset, plan, args.workdir, out, best=best, only=only, device=args.device, data_root=args.data_root)
    print((out / "table.md").read_text())
    return 0


def cmd_study(args) -> int:
    """The SAM study or the attack study on the preset's validation images."""
    from .experiments.pipeline import prepare
    from .experiments.presets import get_preset
    from .experiments.study import attack_study, sam_study

    preset = get_preset(args.preset)
    arts = prepare(preset, args.workdir, device=args.device, data_root=args.data_root)
    out = Path(args.out or f"results/{preset.name}/{args.which}-study")
    if args.which == "sam":
        only = tuple(o.strip() for o in args.only.split(";") if o.strip())
        summary = sam_study(preset, arts, out, n=args.n, only=only)
        for r in summary["rows"]:
            print(f"{r['setting']:<28} clean {100 * r['clean_acc']:5.1f}  worst case {100 * r['worst_case']:5.1f} (n = {r['n']})")
    else:
        summary = attack_study(preset, arts, out, defence=args.defence, n=args.n)
        for r in summary["rows"]:
            print(f"{r['attack']:<22} robust {100 * r['robust_acc']:5.1f}  ({r['seconds']:.0f} s)")
    print(f"wrote {out}/study.json")
    return 0


def cmd_data(args) -> int:
    from .experiments.data import download_cifar10, load_cifar10

    if args.name != "cifar10":
        raise SystemExit(f"unknown data set {args.name!r}: only 'cifar10' can be fetched")
    root = Path(args.root)
    if args.download:
        path = download_cifar10(root, progress=True)
        print(f"CIFAR-10 ready in {path}")
    x, y = load_cifar10(root, "test", limit=10)
    print(f"CIFAR-10 at {root}: test batch readable, images {tuple(x.shape[1:])}")
    return 0


def cmd_purify(args) -> int:
    import torch

    from .experiments.data import load_images, save_images
    from .experiments.presets import get_preset
    from .experiments.pipeline import load_trained_score
    from .method.purify import Purifier

    preset = get_preset(args.preset)
    x, names = load_images(args.input)
    score = load_trained_score(preset, Path(args.workdir))
    cfg = preset.purify
    if args.eps_pur is not None:
        cfg = cfg.replace(eps_pur=args.eps_pur)
    y = Purifier(score, cfg)(x.to(torch.float32))
    paths = save_images(y, args.out, names=names)
    print(f"purified {len(x)} image(s) → {paths[0] if len(paths) == 1 else args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pursamere", description="PurSAMERE adversarial purification: demo, training, purification, evaluation.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the main job: digits end to end (or --toy: 2-D toy in seconds)")
    d.add_argument("--toy", action="store_true", help="run the 2-D toy demo (exact score, no training)")
    d.add_argument("--out", default=None, help="output folder (default results/<preset>/<run-id>)")
    d.add_argument("--preset", default="digits")
    d.add_argument("--workdir", default="runs", help="where checkpoints and caches live")
    d.add_argument("--fresh", action="store_true", help="retrain instead of reusing cached checkpoints")
    d.add_argument("--device", default="cpu", help="cpu or cuda")
    d.add_argument("--data-root", default=None, help="folder of the data set (CIFAR-10 presets)")
    d.set_defaults(func=cmd_demo)

    for name, fn, helptext in (("reproduce", cmd_reproduce, "the full protocol of a preset (all test images, long attacks), resumable"),
                               ("train-score", cmd_train_score, "train (or resume) the preset's score net and classifiers")):
        r = sub.add_parser(name, help=helptext)
        r.add_argument("--preset", default="digits")
        r.add_argument("--workdir", default="runs")
        r.add_argument("--out", default=None)
        r.add_argument("--fresh", action="store_true")
        r.add_argument("--device", default="cpu", help="cpu or cuda")
        r.add_argument("--data-root", default=None, help="folder of the data set (CIFAR-10)")
        r.set_defaults(func=fn)

    tc = sub.add_parser("train-classifier", help="train the preset's classifier, optionally adversarially (PGD, Madry et al.)")
    tc.add_argument("--preset", default="digits")
    tc.add_argument("--workdir", default="runs")
    tc.add_argument("--adversarial", action="store_true", help="PGD adversarial training at the preset's ℓ∞ budget")
    tc.add_argument("--trades", action="store_true", help="TRADES (Zhang et al. 2019) at the preset's ℓ∞ budget")
    tc.add_argument("--beta", type=float, default=6.0, help="TRADES' β")
    tc.add_argument("--pgd-steps", type=int, default=7, help="steps of the inner maximisation")
    tc.add_argument("--n", type=int, default=200, help="test images for the PGD-20 check")
    tc.add_argument("--device", default="cpu")
    tc.add_argument("--data-root", default=None)
    tc.set_defaults(func=cmd_train_classifier)

    ev = sub.add_parser("evaluate", help="attack chosen defences of a trained preset")
    ev.add_argument("--preset", default="digits")
    ev.add_argument("--workdir", default="runs")
    ev.add_argument("--defences", default="", help="comma-separated name prefixes (default: all)")
    ev.add_argument("--attacks", default="gpgd20,bpda20-det", help="comma-separated names from evaluate.ATTACKS")
    ev.add_argument("--threats", default="inf", help="comma-separated norm[:eps], e.g. inf,2:0.5,1")
    ev.add_argument("--n", type=int, default=100, help="test images (the first n)")
    ev.add_argument("--out", default=None)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--data-root", default=None)
    ev.set_defaults(func=cmd_evaluate)

    en = sub.add_parser("ensemble", help="attack every defence with the whole suite; worst case per image (AutoAttack's count)")
    en.add_argument("--preset", default="digits")
    en.add_argument("--workdir", default="runs")
    en.add_argument("--eps", default="0.1,0.15,0.2", help="comma-separated ℓ∞ budgets (empty: the preset's)")
    en.add_argument("--n", type=int, default=64, help="table images (first n of the fixed order)")
    en.add_argument("--square-queries", type=int, default=100)
    en.add_argument("--best", default="", help='purifier overrides chosen by the SAM study, as JSON, e.g. \'{"rho": 0.0}\'')
    en.add_argument("--only", default="", help="comma-separated defence-name prefixes (default: all)")
    en.add_argument("--out", default=None)
    en.add_argument("--device", default="cpu")
    en.add_argument("--data-root", default=None)
    en.set_defaults(func=cmd_ensemble)

    st = sub.add_parser("study", help="the SAM study or the attack study on the validation images")
    st.add_argument("which", choices=("sam", "attacks"))
    st.add_argument("--preset", default="digits")
    st.add_argument("--workdir", default="runs")
    st.add_argument("--n", type=int, default=None, help="validation images (default: all of them)")
    st.add_argument("--only", default="", help="SAM study: semicolon-separated setting names (default: all)")
    st.add_argument("--defence", default="ERE descent", help="attack study: 'ERE descent' or 'PurSAMERE'")
    st.add_argument("--out", default=None)
    st.add_argument("--device", default="cpu")
    st.add_argument("--data-root", default=None)
    st.set_defaults(func=cmd_study)

    dd = sub.add_parser("data", help="fetch or check a data set")
    dd.add_argument("name", help="cifar10")
    dd.add_argument("--root", default="data", help="folder that holds (or will hold) cifar-10-batches-py/")
    dd.add_argument("--download", action="store_true", help="download the official archive and check its MD5")
    dd.set_defaults(func=cmd_data)

    pu = sub.add_parser("purify", help="purify images (PNG/JPEG/.npy file or folder)")
    pu.add_argument("input")
    pu.add_argument("--out", required=True, help="output .npy, .png or folder")
    pu.add_argument("--preset", default="digits")
    pu.add_argument("--workdir", default="runs")
    pu.add_argument("--eps-pur", type=float, default=None)
    pu.set_defaults(func=cmd_purify)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"pursamere: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
