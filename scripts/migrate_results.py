"""Migrate ``results.json`` files of format 1 (before structured identities) to format 2, once.

Format 1 rows carried the defence's identity only in its display name and the purifier config;
per-image outcomes were a "0101" string. Format 2 rows store the family, the classifier, the
purifier settings, determinism and the attack's role as fields, and outcomes as a list. This
script is the ONE place that reads old display names (for the few fields a format-1 row lacks);
the package itself never does. Rows keep their numbers; ``worst_case`` is recomputed.

    python scripts/migrate_results.py book/data/*/        # each folder's results.json, in place
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pursamere.evaluation.results import SCHEMA, worst_case
from pursamere.evaluation.suite import Role
from pursamere.io import atomic_write_json

PROTOCOLS = {"attacks": "attack-study", "sam": "sam-study"}


def family_and_classifier(row: dict) -> tuple[str, str]:
    """The family and classifier of a format-1 row, from its purifier config (and, where the config
    cannot tell, its display name)."""
    cfg, name = row.get("config") or {}, row["defence"]
    if "rho" in cfg:  # Algorithm 1: SAM on or off
        sam = cfg["rho"] > 0 or cfg.get("rho_sigma") is not None
        return ("PurSAMERE" if sam else "ERE descent"), ("pgd-at" if name.startswith("PGD-AT + ") else "eq17")
    if "sigma_noise" in cfg:
        return "ADP", "plain"
    if "sigma_star" in cfg:
        return "DiffPure-style", "plain"
    return {"PGD-AT": ("adversarial training", "pgd-at"), "TRADES": ("TRADES", "trades")}.get(name, ("undefended", "plain"))


def role(row: dict, meta: dict) -> str:
    """The attack's role: a study's variants, the tables' long BPDA, else read from the settings."""
    if meta.get("study") == "attacks":
        return Role.VARIANT.value
    s = row["attack_settings"]
    long_steps = (meta.get("plan") or {}).get("bpda_long_steps")
    if s.get("kind") == "pgd" and s.get("gradient") == "bpda" and long_steps and s.get("steps") == long_steps \
            and long_steps != (meta.get("plan") or {}).get("bpda_steps"):
        return Role.BPDA_LONG.value

    class Spec:  # the fields Role.of reads
        kind, gradient = s.get("kind", "pgd"), s.get("gradient")
        unroll_last, warm_from = s.get("unroll_last"), s.get("warm_from")
    return Role.of(Spec).value


def migrate(path: Path) -> bool:
    res = json.loads(path.read_text())
    meta = res["meta"]
    if meta.get("schema") == SCHEMA:
        return False
    for r in res["rows"]:
        fam, clf = family_and_classifier(r)
        r["family"], r["classifier"] = fam, clf
        r["purifier"] = r.pop("config", {}) or {}
        r["deterministic"] = not r.pop("stochastic", False)
        r["role"] = role(r, meta)
        r["survived"] = [int(c) for c in r["survived"]] if isinstance(r["survived"], str) else r["survived"]
        r.setdefault("cascade", False)
        r.setdefault("models", {})  # the weights of format-1 runs were not shipped
    meta["schema"] = SCHEMA
    plan = meta.get("plan") or {}
    meta.setdefault("protocol", PROTOCOLS.get(meta.get("study")) or ("custom" if "purpose" in meta else
                                                                     "tables" if "bpda_long_steps" in plan else "ensemble"))
    meta["migrated_from"] = "format 1 (scripts/migrate_results.py)"
    res["worst_case"] = worst_case(res["rows"])
    atomic_write_json(path, res)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+")
    for f in ap.parse_args().folders:
        p = Path(f) / "results.json" if Path(f).is_dir() else Path(f)
        if p.exists():
            print(f"{p}: {'migrated' if migrate(p) else 'already format 2'}")


if __name__ == "__main__":
    main()
