"""The ``pursamere`` command: a thin shell that builds a protocol and calls the one engine.

Under ``torchrun`` (``WORLD_SIZE`` set) the evaluating commands shard their attacks over the ranks:
``torchrun --nproc_per_node 4 -m pursamere ensemble --preset digits``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from pathlib import Path


def _whole(text: str, least: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}") from None
    if v < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {v}")
    return v


def _positive_int(text: str) -> int:
    return _whole(text, 1)


def _nonnegative_int(text: str) -> int:
    return _whole(text, 0)


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return v


def _budget_list(text: str) -> tuple:
    """``"0.1"`` or ``"0.1,0.2"``: ℓ∞ budgets, each a finite number > 0 ("" keeps the preset's)."""
    return tuple(_positive_float(t) for t in _items(text))


def _step_list(text: str) -> tuple:
    """``"40"`` or ``"40,80"``: step counts, each a whole number >= 1."""
    return tuple(_positive_int(t.strip()) for t in text.split(","))


EVALUATE_ATTACKS = "gpgd20,bpda20-det"  # evaluate's default attacks


def _refuse_ignored(args, command: str, why: str, defaults: dict) -> None:
    """One error line naming every option of ``defaults`` (name → the value meaning "not given") that ``args`` sets,
    when ``command`` would not use it: an ignored option is refused, never dropped silently."""
    given = [f"--{k.replace('_', '-')}" for k, default in defaults.items() if getattr(args, k, default) != default]
    if given:
        raise ValueError(f"{command} does not take {', '.join(given)}: {why}")


def _refuse_unused_models(args, preset, purifier: bool = False) -> None:
    """Model options a command would ignore are refused, never dropped silently."""
    given = [flag for flag, name in (("--score-checkpoint", "score_checkpoint"), ("--classifier", "classifier"),
                                     ("--classifier-weights", "classifier_weights"), ("--normalization", "normalization"))
             if getattr(args, name, None)]
    if preset.models != "user":
        if purifier and "--score-checkpoint" in given:
            raise ValueError(f"--score-checkpoint: preset {preset.name} has its own score model, and the purifier you "
                             "give needs none; the official NCSNv2 checkpoint goes with --preset cifar10-ncsnv2")
        unused = [] if purifier else given
        if unused:
            raise ValueError(f"{', '.join(unused)}: preset {preset.name} uses its own models; your score model and "
                             "classifier go with --preset cifar10-ncsnv2, your classifier also with evaluate --purifier")
    extra = [f for f in given if f in ("--classifier-weights", "--normalization")]
    if extra and not getattr(args, "classifier", None):
        raise ValueError(f"{' and '.join(extra)} need{'s' if len(extra) == 1 else ''} --classifier FILE.py:FN "
                         f"({'it describes' if len(extra) == 1 else 'they describe'} your classifier)")


def _options(args, resume: bool = False):
    from .evaluation.sharding import init_distributed
    from .experiments.engine import Options

    _refuse_unused_models(args, _preset(args))
    shards = init_distributed(args.device) if "WORLD_SIZE" in os.environ else None
    minutes = getattr(args, "minutes", None)
    if minutes is not None and not minutes > 0:
        raise ValueError(f"--minutes must be > 0, got {minutes}")
    deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
    return Options(deadline=deadline, workdir=args.workdir, device=args.device, fresh=getattr(args, "fresh", False),
                   weights=getattr(args, "weights", "train"), score_checkpoint=getattr(args, "score_checkpoint", None),
                   classifier=_classifier_spec(args),
                   resume=resume or getattr(args, "resume", False), data_root=args.data_root, shards=shards,
                   progress=not getattr(args, "quiet", False))


def _engine(args, protocol, kind: str, resume: bool = False, default_out=None):
    """Run ``protocol`` with the arguments' options; print the table on rank 0."""
    from .evaluation.sharding import shutdown
    from .experiments.engine import results_dir, run

    preset = _preset(args)
    opts = _options(args, resume)
    try:
        res = run(preset, protocol, results_dir(preset.name, kind, args.out or default_out), opts)
    finally:
        if opts.shards is not None:
            shutdown(opts.shards)
    if res.table:
        print(res.table)
        print(f"wrote {res.out}/ in {res.summary['seconds_total']:.0f} s")
    return res


def _classifier_spec(args):
    """The user's classifier from --classifier/--classifier-weights/--normalization (None when not given)."""
    from .experiments.user_models import ClassifierSpec

    if not getattr(args, "classifier", None):
        return None
    return ClassifierSpec(args.classifier, weights=args.classifier_weights, normalization=args.normalization)


def _preset(args):
    from .experiments.presets import get_preset

    return get_preset(args.preset)


def _items(text: str, sep: str = ",") -> tuple:
    return tuple(t.strip() for t in text.split(sep) if t.strip())


# ------------------------------------------------------------------------------------------ commands
def cmd_demo(args) -> int:
    if args.toy:
        _refuse_ignored(args, "demo --toy", "the 2-D toy has an exact score and trains nothing (only --out applies)",
                        dict(preset="digits", weights="train", minutes=None, resume=False, fresh=False, data_root=None,
                             device="cpu", score_checkpoint=None, classifier=None, classifier_weights=None,
                             normalization=None))
        from .experiments.engine import results_dir
        from .experiments.toydemo import run_toy_demo

        out = results_dir("toy", "demo", args.out)
        res = run_toy_demo(out)
        print(res["report"])
        print(f"wrote {out}/results.json, report.md, toy.png")
        return 0
    from .experiments import protocols

    preset = _preset(args)
    if preset.models == "shipped":  # cifar10-cpu: no training; the key rows at the demo plan's short attacks
        from .evaluation.suite import Budget
        from .experiments import cifar10_cpu

        d = preset.demo
        budget = Budget(gpgd_steps=d.gpgd_steps, bpda_steps=d.bpda_steps, exact_steps=d.exact_steps, partial_steps=d.bpda_steps,
                        apgd_steps=d.bpda_steps, square_queries=d.square_queries, eot=d.eot)
        protocol = cifar10_cpu.table_protocol(preset, "demo", n=d.n_test, budget=budget, have=cifar10_cpu.shipped_roles())
        _engine(args, dataclasses.replace(protocol, batch_size=d.batch_size), "demo")
        return 0
    _engine(args, protocols.tables(preset, preset.demo), "demo")
    return 0


def cmd_reproduce(args) -> int:
    """The preset's full protocol (all test images, long attacks), resumable."""
    from .experiments import protocols

    preset = _preset(args)
    _engine(args, protocols.tables(preset, preset.full), "full", resume=True, default_out=f"results/{preset.name}/full")
    return 0


def cmd_train_score(args) -> int:
    from .experiments.artifacts import prepare

    preset = _preset(args)
    if preset.models == "user":
        raise ValueError(f"train-score: preset {preset.name} trains nothing, its models are given by path "
                         "(--score-checkpoint, --classifier) to demo, evaluate or ensemble")
    _refuse_ignored(args, "train-score", "it trains (or loads) the preset's models into --workdir; evaluate them with "
                    "ensemble or evaluate", dict.fromkeys(("out", "minutes", "classifier", "classifier_weights",
                                                           "normalization", "score_checkpoint")))
    prepare(preset, args.workdir, fresh=args.fresh, device=args.device, data_root=args.data_root,
            progress=not args.quiet, log=(lambda *a: None) if args.quiet else print,
            weights=args.weights)
    return 0


def cmd_train_classifier(args) -> int:
    """Train the preset's classifier, plainly or with PGD adversarial training (Madry et al.) or TRADES."""
    from .experiments.artifacts import train_single_classifier

    if args.adversarial and args.trades:
        raise ValueError("choose one of --adversarial (PGD-AT) and --trades")
    if args.beta is not None and not args.trades:
        raise ValueError("--beta is TRADES' β: it needs --trades")
    if args.pgd_steps is not None and not (args.adversarial or args.trades):
        raise ValueError("--pgd-steps sets the inner maximisation of --adversarial or --trades; plain training has none")
    args.beta = 6.0 if args.beta is None else args.beta
    args.pgd_steps = 7 if args.pgd_steps is None else args.pgd_steps
    kind = "adv" if args.adversarial else ("trades" if args.trades else "plain")
    r = train_single_classifier(_preset(args), kind, args.workdir, pgd_steps=args.pgd_steps, beta=args.beta,
                                device=args.device, data_root=args.data_root, n_check=args.n)
    print(f"{r['label']} classifier → {r['path']}: clean {r['clean']:.3f}, PGD-20 ℓ∞ {r['eps']:g} robust {r['robust']:.3f} "
          f"(n = {r['n']})")
    return 0


def _threats(args, preset) -> list:
    from .evaluation.attacks import Threat

    threats = []
    for t in _items(args.threats):
        norm, _, eps = t.partition(":")
        canonical = Threat(norm, 1.0).norm
        try:
            value = float(eps) if eps else preset.threats[canonical]
        except ValueError:
            raise ValueError(f"--threats {t!r}: the budget after ':' must be a number, e.g. inf:0.1") from None
        except KeyError:
            raise ValueError(f"--threats {t!r}: preset {preset.name} has no ℓ{canonical} budget; give one, e.g. {norm}:0.5") from None
        threats.append(Threat(norm, value))
    return threats


def cmd_evaluate_user(args) -> int:
    """``pursamere evaluate --purifier FILE.py:FN``: evaluate_purifier on a user's purifier (and classifier)."""
    from .evaluation.report import evaluate_purifier
    from .experiments.artifacts import prepare
    from .experiments.engine import results_dir, select_images
    from .experiments.protocols import Images
    from .experiments.user_models import load_classifier, load_factory

    preset = _preset(args)
    _refuse_unused_models(args, preset, purifier=True)
    _refuse_ignored(args, "evaluate --purifier", "it runs the standard ensemble (evaluate_purifier) on the CPU until it "
                    "is done (--resume continues a stopped run)",
                    dict(minutes=None, device="cpu", defences="", attacks=EVALUATE_ATTACKS))
    make = load_factory(args.purifier)
    try:
        purifier = make()
    except Exception as e:
        raise ValueError(f"purifier factory {args.purifier!r} raised {type(e).__name__}: {e}") from e
    if not callable(purifier):
        raise ValueError(f"purifier factory {args.purifier!r} returned a {type(purifier).__name__}, not a callable x -> x")
    arts = prepare(preset, args.workdir, fresh=args.fresh, device="cpu", data_root=args.data_root, progress=not args.quiet,
                   log=(lambda *a: None) if args.quiet else print, weights=args.weights,
                   score_checkpoint=args.score_checkpoint, classifier=_classifier_spec(args))
    clf = load_classifier(_classifier_spec(args), image_shape=preset.image_shape) if args.classifier \
        else arts.classifier("plain")
    x, y, what = select_images(preset, arts.split, Images("table", args.n))
    threats = _threats(args, preset)
    out = results_dir(preset.name, "purifier", args.out)
    for t in threats:
        folder = out if len(threats) == 1 else out / f"l{t.norm}-{t.eps:g}"
        rep = evaluate_purifier(clf, purifier, x, y, t, budget=preset.ensemble.budget, strong=args.strong,
                                name=args.purifier, out=folder, resume=args.resume, progress=not args.quiet)
        print(rep.table())
        print(f"wrote {folder}/ ({what})")
    return 0


def cmd_evaluate(args) -> int:
    """Chosen defences × named attacks × threats on the preset's trained models."""
    from .experiments import protocols

    if args.purifier:
        return cmd_evaluate_user(args)
    if args.strong:
        raise ValueError("--strong goes with --purifier (your purifier's convergence check); for the preset's "
                         "defences run ensemble --strong")
    preset = _preset(args)
    try:
        attacks = tuple(protocols.NAMED_ATTACKS[a] for a in _items(args.attacks))
    except KeyError as e:
        raise ValueError(f"unknown attack {e.args[0]!r}: choose from {sorted(protocols.NAMED_ATTACKS)}") from None
    _engine(args, protocols.custom(preset, attacks, tuple(_threats(args, preset)), n=args.n, only=_items(args.defences)),
            "eval")
    return 0


def cmd_ensemble(args) -> int:
    """The attack ensemble (worst case per image) over ℓ∞ budgets, every defence."""

    from .experiments import protocols

    preset = _preset(args)
    plan = preset.ensemble
    eps = args.eps or plan.eps
    budget = plan.budget if args.steps is None else protocols.budget_at(args.steps, args.restarts)
    if args.steps is None and args.restarts != 1:
        raise ValueError("--restarts needs --steps (the convergence curve's budget: steps × restarts)")
    budget = budget if args.square_queries is None else dataclasses.replace(budget, square_queries=args.square_queries)
    budget = budget.doubled() if args.strong else budget
    then = None
    if args.then_steps is not None:
        if args.strong:
            raise ValueError("--then-steps and --strong are two ways to run longer attacks: choose one")
        steps = (budget.apgd_steps, *args.then_steps)
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"--then-steps {','.join(map(str, args.then_steps))}: each suite's steps must exceed the one "
                             f"before it (the first suite's are {budget.apgd_steps}; each longer suite runs on what the "
                             "ones before it left)")
        rungs = tuple(protocols.budget_at(n, args.restarts) for n in args.then_steps)
        then = rungs[0] if len(rungs) == 1 else rungs
        names = [a.name for a in protocols.suite_then(budget, then)]
        clash = sorted({x for x in names if names.count(x) > 1})
        if clash:
            raise ValueError(f"--then-steps {','.join(map(str, args.then_steps))}: its attacks {', '.join(clash)} would "
                             "repeat an earlier suite's (the same step or query counts): choose other counts")
    if args.purifier_classifier and preset.models != "shipped":
        raise ValueError(f"--purifier-classifier applies to --preset cifar10-cpu, not {preset.name} (its purifier rows "
                         "name their classifier)")
    plan = dataclasses.replace(plan, n_test=args.n or plan.n_test, eps=eps, budget=budget, then=then,
                               batch_size=args.batch_size or plan.batch_size)
    if preset.models == "shipped":  # cifar10-cpu: its own table (the classifiers it ships), in two parts
        from .experiments import cifar10_cpu

        if args.best:
            raise ValueError(f"--best does not apply to --preset {preset.name}: its purifier rows are fixed (--part key|rest)")
        unknown = [e for e in eps if not any(abs(e - v) < 1e-9 for v in preset.ensemble.eps)]
        if unknown:
            raise ValueError(f"--preset {preset.name} attacks at ℓ∞ {', '.join(f'{v:.6g}' for v in preset.ensemble.eps)} only, "
                             f"not {', '.join(f'{e:g}' for e in unknown)}")
        have = cifar10_cpu.shipped_roles()
        if args.purifier_classifier == "eq17" and "eq17" not in have:
            raise ValueError("--purifier-classifier eq17: the eq.-17 classifier is not shipped in weights/cifar10/ "
                             "(train it with scripts/train_cifar10.py purify-train, then eq17)")
        if args.purifier_classifier == "clean":
            have = tuple(r for r in have if r != "eq17")
        protocol = cifar10_cpu.table_protocol(preset, args.part, n=args.n or plan.n_test, budget=budget, have=have,
                                              then=then)
        protocol = dataclasses.replace(protocol, batch_size=plan.batch_size,
                                       defences=tuple(protocols.select_defences(protocol.defences, _items(args.only))),
                                       threats=tuple(t for t in protocol.threats
                                                     if t.norm != "inf" or any(abs(t.eps - e) < 1e-9 for e in eps)))
        _engine(args, _reseeded(protocol, args.seed), f"ensemble-{args.part}")
        return 0
    try:
        best = json.loads(args.best) if args.best else None
    except json.JSONDecodeError as e:
        raise ValueError(f"--best {args.best!r} is not valid JSON ({e.msg} at character {e.pos}); "
                         'e.g. \'{"rho": 0.0}\'') from None
    if best is not None and not isinstance(best, dict):
        raise ValueError(f"--best must be a JSON object of purifier settings, got {args.best!r}")
    _engine(args, _reseeded(protocols.ensemble(preset, plan, best=best, only=_items(args.only)), args.seed), "ensemble")
    return 0


def _reseeded(protocol, seed: int):
    """``protocol`` run from ``seed`` (``ensemble --seed``): every image's random starts, and the noise streams of the
    stochastic purifiers (ADP, DiffPure-style; their config's seed + ``seed``), start from it. Seed 0 is the
    protocol as recorded. A fixed-seed purifier keeps its noise: that noise is part of the defence, which the
    attacker knows. The seed is recorded in the plan and in every row, so the rows of two seeds never mix."""
    if not seed:
        return protocol
    defences = tuple(dataclasses.replace(d, purifier=d.purifier.replace(seed=d.purifier.seed + seed))
                     if getattr(d.purifier, "fixed_noise", True) is False else d for d in protocol.defences)
    return dataclasses.replace(protocol, seed=seed, defences=defences, plan={**(protocol.plan or {}), "seed": seed},
                               title=f"{protocol.title}, seed {seed}")


def cmd_study(args) -> int:
    """The SAM study or the attack study on the preset's validation images."""
    from .experiments import protocols

    preset = _preset(args)
    if args.which == "convergence":
        return _convergence(args, preset)
    if args.which == "sam":
        protocol = protocols.sam_study(preset, n=args.n, only=_items(args.only, ";"))
    else:
        protocol = protocols.attack_study(preset, family=args.defence, n=args.n)
    res = _engine(args, protocol, f"{args.which}-study", default_out=f"results/{preset.name}/{args.which}-study")
    if res.study is None:
        return 0
    for r in res.study["rows"]:
        if args.which == "sam":
            print(f"{r['setting']:<28} clean {100 * r['clean_acc']:5.1f}  worst case {100 * r['worst_case']:5.1f} (n = {r['n']})")
        else:
            print(f"{r['attack']:<22} robust {100 * r['robust_acc']:5.1f}  ({r['seconds']:.0f} s)")
    return 0


def _convergence(args, preset) -> int:
    """Every budget of the convergence ladder (one results folder each, resumable), then convergence.json."""
    from .experiments.studies import run_convergence

    points = []
    for b in _items(args.only):
        m = re.fullmatch(r"(\d+)x(\d+)(?:-seed(\d+))?", b)
        if m is None or int(m[1]) < 1 or int(m[2]) < 1:
            raise ValueError(f"--only {args.only!r}: give budgets as STEPSxRESTARTS or STEPSxRESTARTS-seedS, "
                             "e.g. 20x1,40x1,20x2,80x1-seed1")
        points.append((int(m[1]), int(m[2]), int(m[3] or 0)))
    ladder = tuple(points) or None
    summary = run_convergence(preset, args.out or f"results/{preset.name}/convergence", _options(args), ladder, n=args.n)
    for c in summary["curve"]:
        seed = f", seed {c['seed']}" if c.get("seed") else ""
        print(f"{c['defence']:<36} {c['steps']:>4} steps × {c['restarts']}{seed}: worst case {100 * c['worst_case']:5.1f}% "
              f"({c['robust']}/{c['n']}, {c['seconds']:.0f} s)")
    print(f"flat part: {summary['flat']}")
    return 0


def cmd_data(args) -> int:
    from .experiments.data import download_cifar10, load_cifar10

    if args.name != "cifar10":
        raise ValueError(f"unknown data set {args.name!r}: only 'cifar10' can be fetched")
    root = Path(args.root)
    if args.download:
        path = download_cifar10(root, progress=True)
        print(f"CIFAR-10 ready in {path}")
    x, y = load_cifar10(root, "test", limit=10)
    print(f"CIFAR-10 at {root}: test batch readable, images {tuple(x.shape[1:])}")
    return 0


def cmd_purify(args) -> int:
    import torch

    from .experiments.artifacts import load_trained_score
    from .experiments.images import load_images, output_targets, save_images
    from .method.purify import Purifier

    preset = _preset(args)
    x, names = load_images(args.input, item_shape=preset.image_shape)
    output_targets(args.out, len(x), names)  # a bad --out refused before any purification
    score = load_trained_score(preset, Path(args.workdir))
    cfg = preset.purify if args.eps_pur is None else preset.purify.replace(eps_pur=args.eps_pur)
    y = Purifier(score, cfg)(x.to(torch.float32))
    paths = save_images(y, args.out, names=names)
    print(f"purified {len(x)} image(s) → {paths[0] if len(paths) == 1 else args.out}")
    return 0


# ------------------------------------------------------------------------------------------ parser
def _common(p, out_help: str = "output folder (default results/<preset>/<kind>-<date-time>)", resume: bool = True):
    p.add_argument("--preset", default="digits")
    p.add_argument("--workdir", default="runs", help="where checkpoints and caches live")
    p.add_argument("--out", default=None, help=out_help)
    p.add_argument("--fresh", action="store_true", help="retrain instead of reusing cached checkpoints")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--data-root", default=None, help="folder of the data set (CIFAR-10 presets)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--minutes", type=_positive_float, default=None,
                   help="time budget: stop cleanly after this many minutes (finished rows kept; --resume continues)")
    p.add_argument("--weights", choices=("train", "shipped"), default="train",
                   help="train the models (cached in --workdir) or use the shipped, verified ones of weights/")
    p.add_argument("--score-checkpoint", default=None, help="--preset cifar10-ncsnv2: the official NCSNv2 checkpoint")
    p.add_argument("--classifier", default=None, metavar="FILE.py:FN",
                   help="your classifier's factory (cifar10-ncsnv2, or evaluate --purifier; default: the preset's own)")
    p.add_argument("--classifier-weights", default=None, help="its weights (.safetensors, or .pt read with weights_only)")
    p.add_argument("--normalization", default=None, help="the mean/std your classifier expects: none, imagenet, cifar10")
    if resume:
        p.add_argument("--resume", action="store_true", help="continue a finished run in --out (matching rows are reused)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pursamere", description="PurSAMERE adversarial purification: demo, training, purification, evaluation.",
                                epilog="Errors are one line; set PURSAMERE_TRACEBACK=1 to see the traceback behind one.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the main job: digits end to end (or --toy: 2-D toy in seconds)")
    d.add_argument("--toy", action="store_true", help="run the 2-D toy demo (exact score, no training)")
    _common(d)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("reproduce", help="the full protocol of a preset (all test images, long attacks), resumable")
    _common(r, "output folder (default results/<preset>/full)", resume=False)
    r.set_defaults(func=cmd_reproduce)

    ts = sub.add_parser("train-score", help="train (or resume) the preset's score net and classifiers")
    _common(ts, resume=False)
    ts.set_defaults(func=cmd_train_score)

    tc = sub.add_parser("train-classifier", help="train the preset's classifier, optionally adversarially (PGD, Madry et al.)")
    tc.add_argument("--preset", default="digits")
    tc.add_argument("--workdir", default="runs")
    tc.add_argument("--adversarial", action="store_true", help="PGD adversarial training at the preset's ℓ∞ budget")
    tc.add_argument("--trades", action="store_true", help="TRADES (Zhang et al. 2019) at the preset's ℓ∞ budget")
    tc.add_argument("--beta", type=_positive_float, default=None, help="TRADES' β (default 6)")
    tc.add_argument("--pgd-steps", type=_positive_int, default=None, help="steps of the inner maximisation (default 7)")
    tc.add_argument("--n", type=_positive_int, default=200, help="test images for the PGD-20 check")
    tc.add_argument("--device", default="cpu")
    tc.add_argument("--data-root", default=None)
    tc.set_defaults(func=cmd_train_classifier)

    ev = sub.add_parser("evaluate", help="attack chosen defences of a trained preset")
    _common(ev)
    ev.add_argument("--defences", default="", help="comma-separated families (PurSAMERE, ERE descent, ADP, ...), "
                                                   "classifiers (plain, eq17, pgd-at, trades) or exact labels (default: all)")
    ev.add_argument("--attacks", default=EVALUATE_ATTACKS, help="comma-separated names from protocols.NAMED_ATTACKS")
    ev.add_argument("--threats", default="inf", help="comma-separated norm[:eps], e.g. inf,2:0.5,1")
    ev.add_argument("--n", "--n-images", dest="n", type=_positive_int, default=100, help="table images (first n of the fixed order)")
    ev.add_argument("--purifier", default=None, metavar="FILE.py:FN",
                    help="evaluate YOUR purifier: a function (in your file or module) returning a callable x -> x; "
                         "runs evaluate_purifier (the standard ensemble at the preset's budget, cascaded, with the "
                         "obfuscation checks)")
    ev.add_argument("--strong", action="store_true", help="with --purifier: double every step count (a convergence check)")
    ev.set_defaults(func=cmd_evaluate)

    en = sub.add_parser("ensemble", help="attack every defence with the whole suite; worst case per image (AutoAttack's count)")
    _common(en)
    en.add_argument("--eps", type=_budget_list, default=(), help="comma-separated ℓ∞ budgets (default: the preset's ensemble plan)")
    en.add_argument("--n", "--n-images", dest="n", type=_positive_int, default=None,
                    help="table images (default: the preset's ensemble plan); under torchrun write --n-images")
    en.add_argument("--steps", type=_positive_int, default=None,
                    help="the convergence curve's budget (book chapter 7): every attack at STEPS steps, exact STEPS/2")
    en.add_argument("--restarts", type=_positive_int, default=1, help="with --steps: APGD restarts")
    en.add_argument("--square-queries", type=_positive_int, default=None, help="Square's queries (the first suite's, with --then-steps)")
    en.add_argument("--batch-size", type=_positive_int, default=None, help="attack batch size (speed only: each image's random choices come from its own seed); "
                    "a row in progress is kept on disk after every batch, so a stopped run loses at most one")
    en.add_argument("--strong", action="store_true", help="double every step count, query budget and restart count: "
                                                       "a converged suite must not lose more than 1 image in 100 to it")
    en.add_argument("--then-steps", type=_step_list, default=None, metavar="N[,M...]",
                    help="after the suite, run the whole suite again at N steps (N/2 exact, 5N Square queries) on "
                         "the images it left, every attack cascaded: the worst case over both (book chapter 7; "
                         "--preset cifar10-cpu: at ℓ∞ only); N,M: then again at M steps on what both left")
    en.add_argument("--seed", type=_nonnegative_int, default=0,
                    help="the run's seed: every image's random starts and the stochastic purifiers' noise (ADP, "
                         "DiffPure-style) start from it; 0 (default) is the recorded tables'. The same suite from "
                         "another seed measures how much a longer one gains by new draws alone")
    en.add_argument("--best", default="", help='purifier overrides chosen by the SAM study, as JSON, e.g. \'{"rho": 0.0}\'')
    en.add_argument("--only", default="", help="comma-separated families, classifiers or exact labels (default: all); a "
                    "family selects every row of that purifier: 'ERE descent' also picks 'PGD-AT + ERE descent …', an "
                    "exact label only its row")
    en.add_argument("--part", choices=("key", "rest"), default="key",
                    help="--preset cifar10-cpu: the key rows (≥ 256 images) or the rest (≥ 128, the same images' prefix)")
    en.add_argument("--purifier-classifier", choices=("eq17", "clean"), default=None,
                    help="--preset cifar10-cpu: the classifier behind the purifiers (default: the eq.-17 one when it is "
                         "shipped; 'clean' re-runs the recorded table's rows)")
    en.set_defaults(func=cmd_ensemble)

    st = sub.add_parser("study", help="the SAM study or the attack study on the validation images")
    st.add_argument("which", choices=("sam", "attacks", "convergence"))
    _common(st)
    st.add_argument("--n", "--n-images", dest="n", type=_positive_int, default=None, help="validation images (default: all of them)")
    st.add_argument("--only", default="", help="SAM study: semicolon-separated setting names; convergence: "
                                               "comma-separated budgets STEPSxRESTARTS, or STEPSxRESTARTS-seedS for the same "
                                               "budget started from other random points (default: the whole ladder)")
    st.add_argument("--defence", default="ERE descent", help="attack study: 'ERE descent' or 'PurSAMERE'")
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
    pu.add_argument("--eps-pur", type=_positive_float, default=None)
    pu.set_defaults(func=cmd_purify)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # bad input, a missing or unwritable file: one line, no traceback
        if os.environ.get("PURSAMERE_TRACEBACK"):  # the whole story, e.g. for a library that fails to load
            raise
        print(f"pursamere: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
