"""Sensitivity of detection to each key constant: × 0.5 and × 2, F1 on both generators.

    python bench/sensitivity.py [--sim-seeds 1-4] [--bench-seeds 13,7] [--work /tmp/linkage-quality]

Prints one row per (constant, factor): median and worst F1 over the randomised simulator's worlds
and over the independent benchmark's worlds (when it is beside the checkout). Use tuning worlds.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from quality import BENCHMARK, benchmark_world, measure, seeds, simulated_world

from linkage.errors import ConfigError
from linkage.settings import Settings

# dotted setting → why it has the value it has (README's sensitivity table repeats these)
KEY_CONSTANTS = {
    "detect.chance_links_per_account": "chance links per account the link threshold allows; < 1 cannot percolate",
    "detect.resolution": "least density of threshold-strength links a ring keeps (CPM)",
    "detect.within_type_extra": "what further entities of one type or family add, as a share of the strongest",
    "detect.org_discount": "what seats of one declared org sharing something is worth",
    "detect.hub_min_share": "share of the link threshold a hub must carry to propose pairs",
    "detect.hub_size": "entities shared by more accounts are expanded sparsely",
    "detect.max_entities_per_type": "entities per account and type that count",
    "detect.owned_build_alike": "how alike beyond the client a hub build's holders act for it to be one operation's",
    "detect.owned_scaffold_alike": "the same for a hub scaffold, read beyond templates, clients and input lengths",
    "detect.template_repeated_by": "accounts that must fill a template twice for it to link anyone (x0.5: 0, off)",
    "detect.hub_partners": "random cycles a proposing hub lays through its members (each meets 2 per cycle)",
    "detect.activity_window_minutes": "the time slot lockstep compares accounts in (schedulers fill whole hours)",
    "detect.signup_window_minutes": "the time slot sign-up bursts are counted in",
    "detect.burst_min_excess": "how many times its expected count a sign-up window must hold to be a burst",
    "detect.min_ring_size": "fewest members a ring keeps (x0.5: 1, not valid)",
    "detect.min_attachment": "share of its ring's median member's ties below which a member is dropped",
    "detect.seed": "the seed of the hub cycles and Leiden (x0.5, x2: two other seeds, the spread a seed makes)",
    "templates.min_scaffold_chars": "fixed text a scaffold needs around its slots",
    "score.flag_background_share": "share of ordinary customers a flagged ring's members out-risk",
    "score.prior_members": "pseudo-customers of background risk a ring's mean is shrunk by",
    "score.alike_reference_share": "share of the run's rings acting more alike than the reference ring",
    "score.bystander_test_level": "level of the test that a ring's tame members are its loosely tied ones",
    "score.bystander_clock_share": "share of the risky members' lockstep ties the tame ones must reach to keep the clock",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sim-seeds", default="1-4")
    parser.add_argument("--bench-seeds", default="13,7")
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--bench-scale", type=float, default=0.02)
    parser.add_argument("--work", default="/tmp/linkage-quality")
    parser.add_argument("--constants", help="comma-separated dotted names: only these rows (and the defaults)")
    args = parser.parse_args()
    chosen = args.constants.split(",") if args.constants else list(KEY_CONSTANTS)
    unknown = set(chosen) - set(KEY_CONSTANTS)
    if unknown:
        parser.error(f"--constants: not key constants: {sorted(unknown)}")
    work = Path(args.work)
    worlds = [("sim", simulated_world(work, args.scale, s, "random")) for s in seeds(args.sim_seeds)]
    if BENCHMARK.exists():
        worlds += [("benchmark", benchmark_world(work, args.bench_scale, s)) for s in seeds(args.bench_seeds)]
    defaults = Settings()
    print(f"{'constant':>34} {'value':>8} " + " ".join(f"{g:>20}" for g in sorted({g for g, _ in worlds})))
    for key in [None, *chosen]:
        for factor in [1.0] if key is None else [0.5, 2.0]:
            overrides = {}
            if key is not None:
                section, name = key.split(".")
                base = getattr(getattr(defaults, section), name)
                value = type(base)(base * factor) if isinstance(base, int) else base * factor
                overrides = {key: value}
            try:
                settings = Settings.load(overrides=overrides)
            except (ValueError, ConfigError) as error:  # e.g. a share doubled past 1
                print(f"{key:>34} ×{factor:<6} not valid: {str(error).splitlines()[0]}")
                continue
            by_generator: dict[str, list[float]] = {}
            for generator, (inputs, labels) in worlds:
                row = measure(generator, "linkage", inputs, labels, settings)
                by_generator.setdefault(generator, []).append(row["f1"])
            cells = " ".join(f"{statistics.median(v):9.3f} / {min(v):.3f}" for _, v in sorted(by_generator.items()))
            label = "defaults" if key is None else key
            shown = "" if key is None else f"×{factor:g}"
            print(f"{label:>34} {shown:>8} {cells}", flush=True)


if __name__ == "__main__":
    main()
