"""Draws spent against accuracy: fixed ``--draws K`` (1, 4, 16) against ``--draws auto``, on slides the model never saw.

    python benchmarks/draws.py [--quick] [--out FILE.json] [--seeds 3] [--reference 128]

The demo's model (the synthetic recipe trained on the demo cohort, `harness.demo_model`)
predicts three groups of held-out slides:

- ``held_out``: the demo cohort's test and val splits (8 slides of 4096², 12 lesions or
  mimics each): the easy case.
- ``one_lesion``: a cohort made like the demo's with one lesion or mimic per slide
  (``wsi-ats synth --n-blobs 1 --seed 1``; 8 slides, none trained on): fewer lesions.
- ``mixed``: the held-out negatives with ``k`` of their 12 mimics replaced by a lesion cut
  (with its surrounding tissue) from a held-out positive, k = 2, 4, 6, 8, labelled positive
  (16 slides, written once as TIFFs). Lesions and mimics are the same dark spot at the
  attention's scale, so each draw's 32 patches meet a varying number of lesions and the
  per-draw probabilities spread: the hard case, where ``auto`` has something to decide.

Each slide is predicted with K = 1, 4, 16 and ``auto`` under ``--seeds`` seeds, and once
with ``--reference`` draws under another seed: the many-draw answer each mode is compared
with. Per mode: draws spent (per pass over the slides), accuracy against the label,
confident slides, agreement with the reference's class, wall and CPU seconds (each
prediction timed whole: plan, attention, draws). Writes ``benchmarks/results/draws.json``
and ``.png`` and prints a markdown table; ``--quick``: the quick demo model (4 slides of
1024 px, one epoch), 2 one-lesion slides, one mixed slide per negative, 1 seed, 16
reference draws: a smoke run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    CACHE,
    RESULTS,
    building,
    cached_cohort,
    demo_model,
    figure,
    machine_info,
    machine_line,
    markdown_table,
    publish,
    save_figure,
    summary_row,
    warm_up_slide,
)

#: The fixed draw counts compared with ``auto``, in the order reported.
FIXED = (1, 4, 16)
MODES: tuple[int | str, ...] = (*FIXED, "auto")
#: Seed of the reference prediction: other draws than any mode's.
REFERENCE_SEED = 10_000
#: Level-0 pixels of tissue kept around a transplanted lesion.
MARGIN = 6


def mode_name(mode: int | str) -> str:
    return f"K={mode}" if isinstance(mode, int) else str(mode)


# -- slides ----------------------------------------------------------------------------------------


def read_level0(path: str):
    """A slide's level-0 pixels, ``H x W x 3`` (4096² is 48 MiB)."""
    from wsi_ats.readers import open_slide

    with open_slide(path) as slide:
        return slide.read_region(0, (0, 0), slide.levels[0].shape), slide.mpp


def mixed_slide(negative, positive, k: int, annotations: Path, folder: Path) -> Path:
    """``negative``'s slide with its first ``k`` mimics replaced by ``positive``'s first ``k`` lesions, as a TIFF (cached).

    Each lesion comes with its surrounding tissue, a square covering both it and the mimic
    it replaces, centred on the mimic.
    """
    from wsi_ats.evaluate import read_truth_boxes
    from wsi_ats.readers import open_slide
    from wsi_ats.synth.restore import restore

    path = folder / f"{negative.slide_id}-{k}-lesions-of-{positive.slide_id}.tiff"
    if path.exists():
        return path
    pixels, mpp = read_level0(negative.path)
    donor, _ = read_level0(positive.path)
    pixels = pixels.copy()
    mimics = read_truth_boxes(annotations / f"{negative.slide_id}.geojson")
    lesions = read_truth_boxes(annotations / f"{positive.slide_id}.geojson")
    if mimics is None or lesions is None or min(len(mimics), len(lesions)) < k:
        raise ValueError(f"{negative.slide_id}, {positive.slide_id}: fewer than {k} mimics or lesions annotated")
    for mimic, lesion in zip(mimics[:k], lesions[:k]):
        half = int(max(mimic[2] - mimic[0], mimic[3] - mimic[1], lesion[2] - lesion[0], lesion[3] - lesion[1]) // 2) + MARGIN
        (my, mx), (ly, lx) = ((int(b[0] + b[2]) // 2, int(b[1] + b[3]) // 2) for b in (mimic, lesion))
        pixels[my - half : my + half, mx - half : mx + half] = donor[ly - half : ly + half, lx - half : lx + half]
    print(f"writing {path} (once) ...", file=sys.stderr)
    with building(path) as part, open_slide(pixels, mpp=mpp) as slide:
        restore(slide, part)
    return path


def slide_groups(quick: bool) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """The model and the slides of each group: ``{"slide_id", "path", "label"}``."""
    from wsi_ats.manifest import read_manifest

    model, manifest = demo_model(quick)
    rows = read_manifest(manifest)
    held = [r for r in rows if r.split in ("test", "val")] or rows
    one = read_manifest(cached_cohort(2 if quick else 8, 1024 if quick else 4096, seed=1, n_blobs=1))
    negatives = [r for r in held if r.label == "negative"]
    positives = [r for r in held if r.label == "positive"]
    folder = CACHE / ("draws-mixed-quick" if quick else "draws-mixed")
    mixed = [
        {"slide_id": f"{n.slide_id}+{k}", "label": "positive", "path": str(mixed_slide(n, positives[i % len(positives)], k,
                                                                                        manifest.parent / "annotations", folder))}
        for i, n in enumerate(negatives) for k in ((1,) if quick else (2, 4, 6, 8))
    ]  # fmt: skip

    def listed(rs) -> list[dict[str, Any]]:
        return [{"slide_id": r.slide_id, "label": r.label, "path": r.path} for r in rs]

    return model, {"held_out": listed(held), "one_lesion": listed(one), "mixed": mixed}


# -- measuring -------------------------------------------------------------------------------------


def predict(model, path: str, draws: int | str, seed: int) -> dict[str, Any]:
    """One timed prediction, as a user makes it: open, plan, attention, draws."""
    from wsi_ats.engine.run import predict_slide
    from wsi_ats.readers import open_slide

    wall, cpu = time.perf_counter(), time.process_time()
    with open_slide(path) as slide:
        r = predict_slide(model, slide, slide_id=Path(path).stem, draws=draws, seed=seed)
    return {
        "prediction": r.prediction,
        "probabilities": [round(float(p), 5) for p in r.probabilities],
        "draws": r.draws,
        "confident": r.confident,
        "seconds": round(time.perf_counter() - wall, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
    }


def measure(model, groups: dict[str, list[dict[str, Any]]], seeds: int, reference: int) -> list[dict[str, Any]]:
    """Every slide: its reference prediction and each mode's under each seed."""
    slides = []
    for group, members in groups.items():
        for s in members:
            row = {**s, "group": group, "reference": predict(model, s["path"], reference, REFERENCE_SEED)}
            row["modes"] = {mode_name(m): [predict(model, s["path"], m, seed) for seed in range(seeds)] for m in MODES}
            print(f"{group} {s['slide_id']}: reference {row['reference']['prediction']} "
                  f"{row['reference']['probabilities']}, auto draws {[p['draws'] for p in row['modes']['auto']]}",
                  file=sys.stderr, flush=True)  # fmt: skip
            slides.append(row)
    return slides


def totals(slides: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """One mode's figures over ``slides``: per pass over them (the mean over seeds), and rates over every prediction.

    Agreement counts only slides whose reference is confident: the class of a slide whose
    many-draw margin is still open is a coin toss, for the reference as for any mode.
    """
    runs = [(s, p) for s in slides for p in s["modes"][mode]]
    settled = [(s, p) for s, p in runs if s["reference"]["confident"]]
    passes = len(runs) / max(len(slides), 1)
    n = max(len(runs), 1)
    return {
        "slides": len(slides),
        "predictions": len(runs),
        "draws_total": round(sum(p["draws"] for _, p in runs) / passes, 1) if runs else 0,
        "draws_mean": round(sum(p["draws"] for _, p in runs) / n, 2),
        "draws_max": max((p["draws"] for _, p in runs), default=0),
        "accuracy": round(sum(p["prediction"] == s["label"] for s, p in runs) / n, 4),
        "reference_settled": sum(s["reference"]["confident"] for s in slides),
        "agreement": round(sum(p["prediction"] == s["reference"]["prediction"] for s, p in settled) / max(len(settled), 1), 4),
        "confident_misses": sum(p["confident"] and p["prediction"] != s["reference"]["prediction"] for s, p in settled),
        "confident": round(sum(p["confident"] for _, p in runs) / passes, 1) if runs else 0,
        "seconds": round(sum(p["seconds"] for _, p in runs) / passes, 2) if runs else 0,
        "cpu_seconds": round(sum(p["cpu_seconds"] for _, p in runs) / passes, 2) if runs else 0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from wsi_ats import load_checkpoint
    from wsi_ats.engine.confidence import AUTO_BATCH, AUTO_CAP, AUTO_TOLERANCE

    started = time.perf_counter()
    model_path, groups = slide_groups(args.quick)
    model = load_checkpoint(model_path, device="cpu")
    info = machine_info()  # after the cached inputs are made: the load of the measuring itself
    with warm_up_slide() as slide:
        from wsi_ats.engine.run import predict_slide

        predict_slide(model, slide, slide_id="warm-up", draws=4)
    slides = measure(model, groups, args.seeds, args.reference)
    names = [mode_name(m) for m in MODES]
    by_group = {g: {m: totals([s for s in slides if s["group"] == g], m) for m in names} for g in groups}
    overall = {m: totals(slides, m) for m in names}
    reference_acc = sum(s["reference"]["prediction"] == s["label"] for s in slides) / max(len(slides), 1)
    auto, k16 = overall["auto"], overall["K=16"]
    saving = auto["draws_total"] / k16["draws_total"] if k16["draws_total"] else float("nan")
    summary = [
        summary_row(
            "auto's draws / fixed K=16's, same slides (accuracy auto / K=16)",
            f"{saving:.2f} ({auto['draws_total']:g} / {k16['draws_total']:g}; {auto['accuracy']:.3f} / {k16['accuracy']:.3f})",
            "< 1 at equal accuracy",
            auto["draws_total"] < k16["draws_total"] and auto["accuracy"] >= k16["accuracy"],
        ),
        *(
            summary_row(
                f"{m}: mean draws, accuracy, agreement with {args.reference} draws, confident per pass, confident but disagreeing",
                f"{o['draws_mean']:g}, {o['accuracy']:.3f}, {o['agreement']:.3f}, {o['confident']:g}/{o['slides']}, "
                f"{o['confident_misses']}/{o['predictions']}",
            )
            for m, o in overall.items()
        ),
    ]
    return {
        "machine": info,
        "seconds": round(time.perf_counter() - started, 1),
        "model": str(model_path),
        "seeds": args.seeds,
        "reference_draws": args.reference,
        "reference_seed": REFERENCE_SEED,
        "reference_accuracy": round(reference_acc, 4),
        "auto": {"batch": AUTO_BATCH, "cap": AUTO_CAP, "tolerance": AUTO_TOLERANCE},
        "groups": {g: len(m) for g, m in groups.items()},
        "overall": overall,
        "by_group": by_group,
        "slides": [{k: v for k, v in s.items() if k != "path"} for s in slides],
        "summary": summary,
    }


# -- reporting -------------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> Path:
    fig, (left, right) = figure(2, width=5.5)
    colours = {"held_out": "#27a", "one_lesion": "#4a7", "mixed": "#c52"}
    for i, (group, modes) in enumerate(result["by_group"].items()):
        xs = [modes[m]["draws_mean"] for m in modes]
        size = 1.0 - 0.2 * i  # groups that coincide stay visible: the first drawn largest
        left.plot(xs[:-1], [modes[m]["agreement"] for m in modes][:-1], "-", color=colours.get(group), alpha=0.4)
        for x, m in zip(xs, modes):
            auto = m == "auto"
            left.plot(x, modes[m]["agreement"], "*" if auto else "o", ms=(16 if auto else 10) * size, color=colours.get(group))
            if (i == 0 and not auto) or group == "mixed":
                left.annotate(m, (x, modes[m]["agreement"]), textcoords="offset points", xytext=(5, -12), fontsize=7)
        left.plot([], [], "o", color=colours.get(group), label=f"{group} ({modes['auto']['slides']} slides)")
    left.set_xscale("log", base=2)
    left.set_xticks([1, 2, 4, 8, 16, 32], ["1", "2", "4", "8", "16", "32"])
    left.set_xlabel("mean draws per slide (auto: star)")
    left.set_ylabel(f"agreement with the {result['reference_draws']}-draw class (where confident)")
    left.legend(fontsize=8, loc="lower right")
    spent = [(s["group"], p["draws"]) for s in result["slides"] for p in s["modes"]["auto"]]
    groups = list(result["by_group"])
    bins = sorted({d for _, d in spent})
    width = 0.8 / max(len(groups), 1)
    for i, g in enumerate(groups):
        counts = [sum(1 for gg, d in spent if gg == g and d == b) for b in bins]
        right.bar([j + i * width for j in range(len(bins))], counts, width, color=colours.get(g), label=g)
    right.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(bins))], [str(b) for b in bins])
    right.set_xlabel("draws auto spent on a slide")
    right.set_ylabel(f"predictions ({result['seeds']} seeds per slide)")
    right.legend(fontsize=8)
    fig.suptitle(machine_line(result["machine"]), fontsize=8)
    return save_figure(fig, path)


def markdown(result: dict[str, Any]) -> str:
    headers = ["slides", "mode", "draws (per pass)", "mean draws", "accuracy", f"agrees with {result['reference_draws']} draws",
               "confident", "confident, disagreeing", "seconds", "CPU s"]  # fmt: skip
    rows = []
    for group, modes in [*result["by_group"].items(), ("all", result["overall"])]:
        for m, o in modes.items():
            rows.append([f"{group} ({o['slides']})", m, f"{o['draws_total']:g}", f"{o['draws_mean']:.2f}", f"{o['accuracy']:.3f}",
                         f"{o['agreement']:.3f}", f"{o['confident']:g}", f"{o['confident_misses']}/{o['predictions']}",
                         f"{o['seconds']:.1f}", f"{o['cpu_seconds']:.1f}"])  # fmt: skip
    settled = result["overall"]["auto"]["reference_settled"]
    head = (f"{machine_line(result['machine'])}; {result['seeds']} seeds per slide; draws, confident and seconds per pass over "
            f"the slides; agreement with the {result['reference_draws']}-draw class on the {settled} of "
            f"{len(result['slides'])} slides where that is confident (right on {result['reference_accuracy']:.3f} of all)")  # fmt: skip
    return head + "\n\n" + markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the quick demo model and a few 1024-px slides, 1 seed (a smoke run)")
    p.add_argument("--seeds", type=int, default=None, help="predictions per slide and mode, seeds 0.. (default 3)")
    p.add_argument("--reference", type=int, default=None, help="draws of the reference prediction (default 128)")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default benchmarks/results/draws.json)")
    args = p.parse_args(argv)
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.reference = args.reference or (16 if args.quick else 128)
    args.out = args.out or (CACHE / "draws-quick.json" if args.quick else RESULTS / "draws.json")
    return publish(run(args), args.out, plot, markdown)


if __name__ == "__main__":
    sys.exit(main())
