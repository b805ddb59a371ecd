"""Benchmark a distillation training step: its cost over the floor (teacher forward + student step), per loss.

Writes ``docs/benchmarks/training_step.json`` and its section of ``docs/performance.md`` (between the markers), e.g.::

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/training_step.py

For each teacher→student pair at its size (``--pairs teacher:student@size``; batch ``--batch``, 1×size×size inputs,
9 classes, labels in blocks so that every class is present), side by side in the same rounds
(``common.timed_rounds``):

- **student step**: ``SupervisedTrainer._iteration`` with the bundle's segmentation loss (0.5 CE + 0.5 Dice) and
  Adam, i.e. what ``train_student.json`` runs;
- **teacher forward**: ``DistillationTrainer.teacher_forward`` (eval, ``no_grad``, taps), and the same under
  ``torch.inference_mode()`` for comparison;
- **KD step** per loss configuration: ``DistillationTrainer._iteration`` (the real iteration) with KD, FFD, RGD,
  MSKD (= KD + FFD + RGD with the bundle's weights and the taps ``low`` and ``high``) and every baseline term that
  ``mskd.losses`` exports, each with its default arguments;
- **loss**: forward + backward of the configuration's distillation terms alone (segmentation loss excluded) on
  the tensors of a real step (student outputs as leaf tensors), i.e. what the terms add to a step;
- **MSKD step with each trainer option** (``--options``): ``channels_last``, ``teacher_autocast="bfloat16"``,
  ``compile`` (``torch.compile`` of both networks; minutes of compilation on a CPU, so only when asked for), and
  the MSKD terms alone on that trainer's tensors (the option changes the teacher's outputs: layout or precision).

Reported: KD step ÷ floor (floor = teacher forward + student step), loss ÷ KD step, option step ÷ default step, in
CPU time of the process (what the step costs) and wall-clock time.
"""

from __future__ import annotations

from typing import Any

import common  # benchmarks/common.py (the scripts run from this folder)
import torch
from monai.engines import SupervisedTrainer

from mskd.engines import DistillationTrainer
from mskd.losses import DistillationLoss
from mskd.networks import count_parameters, get_network

PAIRS = ["unet:tiny_unet@128", "transunet:enet@128", "transunet:tiny_unet@224"]
OPTIONS = {  # trainer keyword arguments of each option
    "channels_last": {"channels_last": True},
    "teacher_bf16": {"teacher_autocast": "bfloat16"},
    "compile": {"compile": True},
}
BEGIN, END = "<!-- training-step:begin -->", "<!-- training-step:end -->"


def loss_configs() -> dict[str, dict[str, dict]]:
    """Loss configuration -> ``DistillationLoss`` terms: KD, FFD, RGD, MSKD with the bundle's settings, baselines."""
    terms = common.distillation_terms()
    mskd = {
        "KD": common.term_spec(terms["KD"], 0.1, temperature=4.0),
        "FFD": common.term_spec(terms["FFD"], 0.9, band_radius=4),
        "RGD": common.term_spec(terms["RGD"], 0.9, order=2),
    }
    baselines = {name: {name: common.term_spec(cls)} for name, cls in terms.items() if name not in mskd}
    return {**{name: {name: spec} for name, spec in mskd.items()}, "MSKD": mskd, **baselines}


def no_seg_loss(logits: torch.Tensor, _target: torch.Tensor) -> torch.Tensor:
    """A segmentation loss of zero: times the distillation terms alone."""
    return logits.new_zeros(())


def loss_alone(trainer: DistillationTrainer, batch: dict, terms: dict) -> Any:
    """Forward + backward of ``terms`` alone on the tensors of one real step (student outputs as leaf tensors)."""
    inputs, target = trainer._network_input(batch["image"]), batch["label"]
    teacher_logits, teacher_features = trainer.teacher_forward(inputs)
    with torch.no_grad(), trainer.student_feature_taps as taps:
        student_logits = trainer.network(inputs)
    student_features = taps.features
    loss = DistillationLoss(no_seg_loss, terms)

    def run() -> None:
        features = {k: v.detach().requires_grad_(True) for k, v in student_features.items()}
        out = loss(student_logits.detach().requires_grad_(True), teacher_logits, target, features, teacher_features)
        out["loss"].backward()

    return run


def measure(pair: str, batch_size: int, configs: dict, options: list[str], warmup: int, repeats: int) -> dict[str, Any]:
    """Time the variants of one pair ``teacher:student@size`` side by side and derive the ratios."""
    names, size = pair.split("@")
    teacher_name, student_name = names.split(":")
    size = int(size)
    batch = common.synthetic_batch(batch_size, size)
    inputs = batch["image"]
    torch.manual_seed(0)
    teacher = get_network(teacher_name, 1, common.NUM_CLASSES)
    trainers = {
        name: common.distillation_trainer(teacher, student_name, batch, terms) for name, terms in configs.items()
    }
    default = trainers["MSKD"] if "MSKD" in trainers else next(iter(trainers.values()))
    student = common.student_network(student_name)
    supervised = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[batch],
        network=student,
        optimizer=torch.optim.Adam(student.parameters(), lr=1e-3),
        loss_function=common.seg_loss(),
        decollate=False,
    )

    def teacher_inference_mode() -> None:
        with torch.inference_mode(), default.teacher_feature_taps:
            default.inferer(inputs, default.teacher)

    variants = {
        "student step": lambda: supervised._iteration(supervised, batch),
        "teacher forward": lambda: default.teacher_forward(inputs),
        "teacher forward (inference_mode)": teacher_inference_mode,
    }
    for name, trainer in trainers.items():
        variants[f"KD step {name}"] = lambda t=trainer: t._iteration(t, batch)
        variants[f"loss {name}"] = loss_alone(trainer, batch, configs[name])
    for option in options:
        trainer = common.distillation_trainer(teacher, student_name, batch, configs["MSKD"], **OPTIONS[option])
        variants[f"MSKD step {option}"] = lambda t=trainer: t._iteration(t, batch)
        variants[f"loss MSKD {option}"] = loss_alone(trainer, batch, configs["MSKD"])
    seconds = common.timed_rounds(variants, warmup, repeats)

    def ratio(a: str, b: dict[str, float] | str) -> dict[str, float]:
        den = seconds[b] if isinstance(b, str) else b
        return {k: seconds[a][k] / den[k] for k in ("cpu_s", "wall_s")}

    floor = {k: seconds["teacher forward"][k] + seconds["student step"][k] for k in ("cpu_s", "wall_s")}
    return {
        "pair": pair,
        "teacher": teacher_name,
        "student": student_name,
        "size": size,
        "batch": batch_size,
        "params": {"teacher": count_parameters(teacher), "student": count_parameters(student)},
        "seconds": seconds,
        "floor": floor,
        "step_over_floor": {name: ratio(f"KD step {name}", floor) for name in configs},
        "loss_share_of_step": {name: ratio(f"loss {name}", f"KD step {name}") for name in configs},
        "option_over_default": {option: ratio(f"MSKD step {option}", "KD step MSKD") for option in options},
        "option_loss_share_of_step": {
            option: ratio(f"loss MSKD {option}", f"MSKD step {option}") for option in options
        },
        "inference_mode_over_no_grad": ratio("teacher forward (inference_mode)", "teacher forward"),
    }


def markdown(rows: list[dict], meta: dict) -> str:
    """The section written into docs/performance.md."""
    lines = [
        common.provenance("training_step.py", meta),
        "",
        "Floor = teacher forward + student step. Each ratio is given as CPU time / wall-clock time.",
        "",
        "| pair | size | batch | teacher fwd (s) | student step (s) | loss | KD step (s) | **step ÷ floor** "
        "| loss share of step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["seconds"]
        for i, name in enumerate(r["step_over_floor"]):
            head = (
                f"| {r['teacher']} → {r['student']} | {r['size']}² | {r['batch']} | "
                f"{s['teacher forward']['wall_s']:.2f} | {s['student step']['wall_s']:.2f} "
                if i == 0
                else "| | | | | "
            )
            over, share = r["step_over_floor"][name], r["loss_share_of_step"][name]
            lines.append(
                f"{head}| {name} | {s[f'KD step {name}']['wall_s']:.2f} | "
                f"**{over['cpu_s']:.2f}** / {over['wall_s']:.2f} | "
                f"{100 * share['cpu_s']:.1f} % / {100 * share['wall_s']:.1f} % |"
            )
    lines += [
        "",
        "Trainer options with MSKD: the step with the option ÷ the default step (below 1 = faster), and the MSKD "
        "terms' share of that step; teacher forward under `inference_mode` ÷ under `no_grad` (not an option: see the "
        "reading).",
        "",
        "| pair | size | default: MSKD share | "
        + " | ".join(f"{o}: step ÷ default | {o}: MSKD share" for o in OPTIONS)
        + " | inference_mode ÷ no_grad |",
        "|---|---|---|" + "---|---|" * len(OPTIONS) + "---|",
    ]
    for r in rows:
        cells = []
        for name in OPTIONS:
            if name in r["option_over_default"]:
                over, share = r["option_over_default"][name], r["option_loss_share_of_step"][name]
                cells += [
                    f"**{over['cpu_s']:.2f}** / {over['wall_s']:.2f}",
                    f"{100 * share['cpu_s']:.1f} % / {100 * share['wall_s']:.1f} %",
                ]
            else:
                cells += ["—", "—"]
        share, im = r["loss_share_of_step"].get("MSKD"), r["inference_mode_over_no_grad"]
        default = f"{100 * share['cpu_s']:.1f} % / {100 * share['wall_s']:.1f} %" if share else "—"
        lines.append(
            f"| {r['teacher']} → {r['student']} | {r['size']}² | {default} | "
            + " | ".join(cells)
            + f" | {im['cpu_s']:.2f} / {im['wall_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark with the command line ``argv`` (default ``sys.argv[1:]``)."""
    p = common.parser(__doc__.splitlines()[0], None, "training_step", "docs/performance.md", 5, size=None)
    p.add_argument("--pairs", nargs="+", default=PAIRS, help="teacher:student@size, e.g. transunet:enet@224")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--losses", nargs="*", default=None, help="loss configurations (default: all)")
    p.add_argument("--options", nargs="*", default=["channels_last", "teacher_bf16"], choices=list(OPTIONS))
    p.set_defaults(warmup=1)  # a step's one-time costs (optimiser state, first allocations) come with its first run
    args = common.parse_args(
        p,
        quick={"pairs": ["tiny_unet:tiny_unet@16"], "batch": 2, "options": ["channels_last", "teacher_bf16"]},
        argv=argv,
    )
    configs = loss_configs()
    if args.losses:
        configs = {name: configs[name] for name in args.losses}
    meta = common.machine(args, batch=args.batch, pairs=args.pairs, losses=list(configs), options=args.options)
    rows = []
    for pair in args.pairs:
        rows.append(measure(pair, args.batch, configs, args.options, args.warmup, args.repeats))
        r = rows[-1]
        print(
            f"{pair}: floor {r['floor']['wall_s']:.2f} s; "
            + ", ".join(f"{k} {v['cpu_s']:.2f}" for k, v in r["step_over_floor"].items()),
            flush=True,
        )
    common.record(args, meta, rows, markdown, (BEGIN, END), key="pairs")


if __name__ == "__main__":
    main()
