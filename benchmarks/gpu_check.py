"""GPU check: every bundle stack on one CUDA device, GPU throughput and memory, CPU-vs-GPU losses, multi-GPU.

``make gpu-check`` runs it on ``cuda`` (about 8 minutes on one GPU); ``--device cpu --tiny`` runs the same logic at
tiny sizes in well under a minute (what tests/benchmarks/test_gpu_check.py runs)::

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/gpu_check.py

Parts, each a function, each timed, together under a time budget (``--budget-s``, default 480 s; a part or bundle
run that would start after it is recorded as skipped):

- **stacks** (:func:`check_stacks`): each config stack of both bundles (teacher = ``train_teacher.json``, student
  alone = + ``train_student.json``, distillation = + ``distill.json``, evaluation of each = + ``evaluate.json``,
  inference = ``inference.json``) through :meth:`mskd.bundle.Bundle.run` on generated phantoms, a few iterations,
  ``mlflow=False``, outputs in a temporary folder. Precision modes (:data:`MODES`): ``fp16`` is the bundles' CUDA
  default (``amp: true``: ``torch.autocast`` float16 and MONAI's GradScaler); ``bf16`` adds the trainer/evaluator
  argument ``amp_kwargs: {dtype: bfloat16}`` as an override (the bundles have **no AMP dtype key**; MONAI still
  creates its GradScaler, which bfloat16 does not need), ``teacher_autocast: bfloat16`` and ``compile: true``.
  ``channels_last: true`` is the bundles' default in both. By default synapse runs ``fp16`` and kits ``bf16``
  (``--all-modes``: both on both). On a CPU, MONAI's ``autocast("cuda")`` and GradScaler are disabled (the
  distillation trainer autocasts on the CPU instead), and ``compile`` uses the ``eager`` backend (inductor takes
  about a minute here); what was in force is read back from each run's trainer.
- **throughput** (:func:`check_throughput`): images/s and peak memory (``torch.cuda.max_memory_allocated``) of
  TransUNet teacher training (224², batch 24; fp32, fp16, bf16), of the TransUNet → ENet distillation step (KD+CWD
  and MSKD; live and cached teacher; fp16 and bf16; channels-last, as ``distill.json``) and of student inference
  (batch 32, as ``inference.json``), each variant alone on the device, under the bundles' determinism settings.
- **cpu_vs_device** (:func:`check_cpu_vs_device`): the first distillation step's loss terms (seg, KD, CWD, FFD, RGD)
  on a fixed batch with the same weights, on the CPU and on the device in float32 (TF32 off: within ``--rtol``; and
  with torch's default TF32 settings: reported).
- **multi_gpu** (:func:`check_multi_gpu`): with >= 2 GPUs, ``torchrun --nproc_per_node=N`` (nccl) over
  ``train_teacher.json + distill.json + multi_gpu_distill.json`` for 20 iterations; skipped otherwise.
- **projection** (:func:`projection`): wall time of a 150-epoch Synapse distillation from the distillation step.

``--tiny``: 32², batch 2, 1–2 iterations, ``unet``/``tiny_unet`` for ``transunet``/``enet``. Writes JSON (``--out``,
default ``docs/benchmarks/gpu_check.json``), its section of docs/performance.md on a CUDA run (``--doc``), and
prints the Markdown. Exit status: 0 all ok (multi-GPU may be skipped), 1 a check failed or the budget cut it short,
2 no CUDA device.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import common  # benchmarks/common.py (the scripts run from this folder)
import teacher_cache  # benchmarks/teacher_cache.py: the loss configurations
import torch

BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
BUNDLES = ("mskd_synapse", "mskd_kits")
BUDGET_S = 480.0
RTOL = 1e-3  # float32 CPU vs device, TF32 off
# TransUNet's Synapse recipe (Chen et al. 2021): 2211 training slices of the 18 training volumes, batch 24, 150 epochs.
RECIPE = {"training_slices": 2211, "batch": 24, "epochs": 150}

# precision mode -> what it sets; fp16 is what the bundles do on CUDA (`amp: true`), bf16 is not a bundle key
MODES: dict[str, dict[str, Any]] = {
    "fp16": {"amp_dtype": None, "teacher_autocast": None, "compile": False},
    "bf16": {"amp_dtype": "bfloat16", "teacher_autocast": "bfloat16", "compile": True},
}
BUNDLE_MODES = {"mskd_synapse": ("fp16",), "mskd_kits": ("bf16",)}
# trainer arguments of each precision in the throughput part
AMP: dict[str, dict[str, Any]] = {
    "fp32": {},
    "fp16": {"amp": True},  # torch.autocast("cuda") defaults to float16; MONAI adds its GradScaler
    "bf16": {"amp": True, "amp_kwargs": {"dtype": torch.bfloat16}},
}


@dataclass(frozen=True)
class Sizes:
    """What each part runs at: full (one GPU) or ``--tiny`` (a CPU smoke run)."""

    teacher: str
    student: str
    size: int  # throughput and CPU-vs-device slices
    batch: int  # training/distillation batch (slices)
    inference_batch: int
    students: tuple[str, ...]  # inference
    agreement_batch: int
    stack_image_size: int
    stack_epochs: int
    phantom_size: tuple[int, int, int]
    phantom_cases: int  # 1 test, 1 validation, the rest training
    multi_gpu_slices: int  # slices per rank and step under torchrun


FULL = Sizes(
    teacher="transunet",
    student="enet",
    size=224,
    batch=24,
    inference_batch=32,  # inference.json's slice_batch
    students=("enet", "erfnet", "espnet", "mobilenetv2_unet", "tiny_unet"),
    agreement_batch=4,
    stack_image_size=224,
    stack_epochs=2,
    phantom_size=(64, 64, 16),
    phantom_cases=6,
    multi_gpu_slices=24,
)
TINY = Sizes(
    teacher="unet",
    student="tiny_unet",
    size=32,
    batch=2,
    inference_batch=2,
    students=("tiny_unet",),
    agreement_batch=2,
    stack_image_size=32,
    stack_epochs=1,
    phantom_size=(32, 32, 16),
    phantom_cases=4,
    multi_gpu_slices=2,
)


class Clock:
    """Elapsed time of the run against its budget."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.monotonic()
        self.budget_s = budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def skipped(self) -> dict[str, Any]:
        """The record of something skipped because the budget is spent."""
        reason = f"time budget of {self.budget_s:.0f} s spent ({self.elapsed():.0f} s)"
        return {"status": "skipped", "reason": reason, "budget_spent": True}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _on_device(trainer: Any, device: torch.device) -> Any:
    """A trainer from :func:`common.distillation_trainer` (built on the CPU) moved to ``device``.

    The teacher must be on ``device`` already; the student moves in place (the optimiser keeps its parameters).
    """
    trainer.network.to(device)
    trainer.state.device = device
    return trainer


def _no_dropout(network: torch.nn.Module) -> torch.nn.Module:
    """Dropout off (p = 0) and batch norm in training mode: the same function on every device."""
    for module in network.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
    return network


def _status(rows: list[dict]) -> str:
    """A part's status from its rows': ``failed`` if one failed, ``incomplete`` if the budget skipped some."""
    statuses = {r["status"] for r in rows}
    return "failed" if "failed" in statuses else "incomplete" if "skipped" in statuses else "ok"


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


# --- (a) every stack of both bundles ------------------------------------------------------------------------------


def stack_plan(modes: dict[str, tuple[str, ...]]) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """``(bundle, mode, stack name, config files)`` in run order: each training stack, its evaluation, inference."""
    from mskd.bundle import EVALUATE, STACKS

    plan = []
    for bundle, bundle_modes in modes.items():
        for mode in bundle_modes:
            plan += [(bundle, mode, method, files) for method, files in STACKS.items()]
            plan += [(bundle, mode, f"{method}+evaluate", (*files, EVALUATE)) for method, files in STACKS.items()]
            plan.append((bundle, mode, "inference", ("inference.json",)))
    return plan


def mode_overrides(mode: str, files: tuple[str, ...], device: torch.device) -> dict[str, Any]:
    """Config overrides of a precision mode (:data:`MODES`) for the stack ``files``."""
    spec = MODES[mode]
    dtype = {"dtype": f"$torch.{spec['amp_dtype']}"} if spec["amp_dtype"] else None
    if files == ("inference.json",):
        return {"amp": True, **({"evaluator#amp_kwargs": dtype} if dtype else {})}
    out: dict[str, Any] = {"amp": True}
    if dtype:
        out.update({"train#trainer#amp_kwargs": dtype, "validate#evaluator#amp_kwargs": dtype})
    if "distill.json" in files:
        out.update(teacher_autocast=spec["teacher_autocast"], compile=spec["compile"], channels_last=True)
        if spec["compile"] and device.type != "cuda":  # inductor needs about a minute per network on a CPU
            out["train#trainer#compile_kwargs"] = {"backend": "eager"}
    return out


def _in_force(workflow: Any, stack: str) -> dict[str, Any]:
    """What a finished run did, read back from its engine: iterations, losses and the options in force."""
    from mskd.engines import loss_terms

    value = workflow.parser.get_parsed_content
    if stack == "inference":
        engine = value("evaluator")
        out: dict[str, Any] = {"outputs": len(list(Path(value("output_dir")).glob("*.nii.gz")))}
    elif stack.endswith("+evaluate"):
        engine = value("validate#evaluator")
        out = {"test_mean_dice": engine.state.metrics.get("test_mean_dice")}
    else:
        engine = value("train#trainer")
        out = {"loss": loss_terms(engine.state.output) if engine.state.output is not None else {}}
        scaler = getattr(engine, "scaler", None)
        out["grad_scaler"] = bool(scaler is not None and scaler.is_enabled())
        for option in ("channels_last", "teacher_autocast", "compile"):
            if hasattr(engine, option):
                setting = getattr(engine, option)
                out[option] = str(setting).removeprefix("torch.") if option == "teacher_autocast" else setting
        if getattr(engine, "compile", False):  # MONAI does not keep compile_kwargs: read them from the config
            out["compile_backend"] = (workflow.parser.get("train#trainer#compile_kwargs") or {}).get(
                "backend", "inductor"
            )
    out.update(
        iterations=int(engine.state.iteration),
        device=str(engine.state.device),
        amp=bool(engine.amp),
        autocast=_autocast_in_force(engine),
    )
    return out


def _autocast_in_force(engine: Any) -> str | None:
    """The dtype an engine's ``amp`` autocasts to on its device, or ``None`` when it does not autocast.

    MONAI's engines autocast with ``torch.autocast("cuda")``, which does nothing on a CPU; the distillation trainer
    autocasts on its own device (``torch.autocast("cpu")`` defaults to bfloat16).
    """
    from mskd.engines import DistillationTrainer

    device = engine.state.device.type
    if not engine.amp or (device != "cuda" and not isinstance(engine, DistillationTrainer)):
        return None
    dtype = engine.amp_kwargs.get("dtype") or torch.get_autocast_dtype(device)
    return str(dtype).removeprefix("torch.")


def check_stacks(
    sizes: Sizes, device: torch.device, workdir: Path, clock: Clock, modes: dict[str, tuple[str, ...]]
) -> dict[str, Any]:
    """Run every stack of :func:`stack_plan` on phantoms; each row says what was in force and ``status`` ok/failed."""
    from mskd.bundle import Bundle
    from mskd.data.phantom import generate_phantom_dataset

    rows = []
    data = {}
    for bundle, mode, stack, files in stack_plan(modes):
        row: dict[str, Any] = {"bundle": bundle, "mode": mode, "stack": stack, "files": list(files)}
        if clock.left() <= 0:
            rows.append({**row, **clock.skipped()})
            continue
        task = bundle.removeprefix("mskd_")
        if task not in data:
            data[task] = workdir / f"data_{task}"
            generate_phantom_dataset(
                data[task], task=task, cases=sizes.phantom_cases, seed=3, size=sizes.phantom_size, test_cases=1
            )
        ckpt_dir = workdir / bundle / mode / "models"
        overrides: dict[str, Any] = {"device": f"$torch.device({str(device)!r})", **mode_overrides(mode, files, device)}
        if stack == "inference":
            test = json.loads((data[task] / "dataset.json").read_text())["test"][0]["image"]
            overrides.update(
                input=str(data[task] / test),
                output_dir=str(workdir / bundle / mode / "predictions"),
                ckpt_path=str(ckpt_dir / "model.pt"),  # the distilled student (distill.json's copy)
                student=sizes.student,
                image_size=sizes.stack_image_size,
            )
        else:
            overrides.update(
                dataset_dir=str(data[task]),
                output_dir=str(workdir / bundle / mode / stack),
                ckpt_dir=str(ckpt_dir),
                teacher=sizes.teacher,
                student=sizes.student,
                image_size=sizes.stack_image_size,
                max_epochs=sizes.stack_epochs,
                val_interval=1,
                batch_size=2,
                slices_per_volume=2,
                num_val_cases=1,
                val_slice_batch=8,
                log_every=1,
                mlflow=False,
            )
        start = time.perf_counter()
        try:
            result = _in_force(Bundle(common.ROOT / "bundles" / bundle).run(files, **overrides), stack)
            losses = result.get("loss", {}).values()
            ok = result["iterations"] > 0 and all(math.isfinite(v) for v in losses) and result.get("outputs") != 0
            ok = ok and not (stack.endswith("+evaluate") and result["test_mean_dice"] is None)
            result["status"] = "ok" if ok else "failed"
        except (Exception, SystemExit) as error:  # a failed run is a result: record it, go on with the others
            result = {"status": "failed", "error": f"{type(error).__name__}: {error}"[-600:]}
        rows.append({**row, **result, "seconds": time.perf_counter() - start})
        print(f"[gpu-check] {bundle} {stack} ({mode}): {rows[-1]['status']} in {rows[-1]['seconds']:.1f} s", flush=True)
    return {"status": _status(rows), "runs": rows}


# --- (b) throughput and memory ------------------------------------------------------------------------------------


def measure(step: Callable[[], object], device: torch.device, batch: int, warmup: int, repeats: int) -> dict:
    """Median time of ``step`` (synchronised with the device), images/s and the peak memory it allocated."""
    _free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)

    def run() -> None:
        step()
        _sync(device)

    seconds = common.timed_rounds({"step": run}, warmup, repeats)["step"]
    cuda = device.type == "cuda"
    return {
        "step_s": seconds["wall_s"],
        "images_per_s": batch / seconds["wall_s"],
        "warmup_s": seconds["warmup_wall_s"],
        "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        "allocated_before_mib": before / 2**20 if cuda else None,
    }


def teacher_training_step(name: str, batch: dict, device: torch.device, precision: str) -> Callable[[], object]:
    """One ``SupervisedTrainer`` step as ``train_teacher.json`` runs it (DiceCE, Adam) at ``precision``."""
    from monai.engines import SupervisedTrainer

    from mskd.networks import get_network

    torch.manual_seed(0)
    network = get_network(name, 1, common.NUM_CLASSES).to(device)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=[batch],
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=1e-3),
        loss_function=common.seg_loss(),
        decollate=False,
        **AMP[precision],
    )
    return lambda: trainer._iteration(trainer, batch)


def distillation_step(
    sizes: Sizes, batch: dict, device: torch.device, loss: str, precision: str, cached: bool
) -> tuple[Callable[[], object], Any]:
    """One ``DistillationTrainer`` step as ``distill.json`` runs it (channels-last), live or with every slice cached."""
    from mskd.networks import get_network

    torch.manual_seed(0)
    teacher = get_network(sizes.teacher, 1, common.NUM_CLASSES).to(device)
    options = {**AMP[precision], "channels_last": True, "teacher_cache": cached}
    if precision == "bf16":
        options["teacher_autocast"] = "bfloat16"
    trainer = _on_device(
        common.distillation_trainer(teacher, sizes.student, batch, teacher_cache.loss_configs()[loss], **options),
        device,
    )
    if cached:  # store the batch's teacher outputs: every timed lookup hits
        trainer.cached_teacher_forward(batch["image"], trainer._network_input(batch["image"].to(device)))
    return (lambda: trainer._iteration(trainer, batch)), trainer


def inference_step(name: str, size: int, batch: int, device: torch.device) -> Callable[[], object]:
    """A student's forward pass on a batch of slices as ``inference.json`` runs it (float16 autocast on CUDA)."""
    from mskd.networks import get_network

    torch.manual_seed(0)
    network = get_network(name, 1, common.NUM_CLASSES).to(device).eval()
    image = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0)).to(device)

    def step() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, torch.float16, enabled=device.type == "cuda"):
            return network(image)

    return step


def check_throughput(sizes: Sizes, device: torch.device, warmup: int, repeats: int, clock: Clock) -> dict[str, Any]:
    """Images/s and peak memory of teacher training, the distillation step and student inference, variant by variant."""
    from monai.utils import set_determinism

    batch = common.synthetic_batch(sizes.batch, sizes.size)
    plan: list[tuple[dict, Callable[[], Any]]] = []
    for precision in AMP:
        row = {"step": "teacher training", "network": sizes.teacher, "variant": precision, "batch": sizes.batch}
        plan.append((row, lambda p=precision: (teacher_training_step(sizes.teacher, batch, device, p), None)))
    for loss in teacher_cache.loss_configs():
        for precision in ("fp16", "bf16"):
            for cached in (False, True):
                variant = f"{loss}, {precision}, {'cached' if cached else 'live'}"
                row = {"step": "distillation", "network": f"{sizes.teacher} → {sizes.student}", "variant": variant}
                row.update(batch=sizes.batch, loss=loss, precision=precision, teacher="cached" if cached else "live")
                plan.append((row, lambda a=(loss, precision, cached): distillation_step(sizes, batch, device, *a)))
    for name in sizes.students:
        row = {"step": "inference", "network": name, "variant": "fp16 autocast", "batch": sizes.inference_batch}
        plan.append((row, lambda n=name: (inference_step(n, sizes.size, sizes.inference_batch, device), None)))

    rows = []
    set_determinism(seed=0)  # as the bundles' `initialize` does (cudnn deterministic, no benchmark)
    try:
        for row, build in plan:
            if clock.left() <= 0:
                rows.append({**row, "size": sizes.size, **clock.skipped()})
                continue
            try:
                step, trainer = build()
                rows.append({**row, "size": sizes.size, **measure(step, device, row["batch"], warmup, repeats)})
                if trainer is not None and trainer.teacher_cache is not None:
                    cache = trainer.teacher_cache
                    rows[-1]["cache"] = {"hits": cache.hits, "misses": cache.misses}  # misses: the fill only
                rows[-1]["status"] = "ok"
            except Exception as error:  # e.g. out of memory: record it, measure the other variants
                rows.append(
                    {**row, "size": sizes.size, "status": "failed", "error": f"{type(error).__name__}: {error}"}
                )
            step = trainer = None  # free this variant before the next one is built
            speed = f"{rows[-1]['images_per_s']:.1f} images/s" if "images_per_s" in rows[-1] else rows[-1]["error"]
            print(f"[gpu-check] {row['step']} {row['network']} {row['variant']}: {speed}", flush=True)
    finally:
        set_determinism(seed=None)
        _free(device)
    cudnn = {"deterministic": True, "benchmark": False}
    return {"status": _status(rows), "cudnn": cudnn, "warmup": warmup, "repeats": repeats, "rows": rows}


# --- (c) CPU vs device --------------------------------------------------------------------------------------------


@contextmanager
def tf32(enabled: bool | None) -> Iterator[None]:
    """TF32 matrix products and convolutions on (``True``), off (``False``) or as torch's defaults (``None``)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_cpu_vs_device(sizes: Sizes, device: torch.device, rtol: float) -> dict[str, Any]:
    """The loss terms of one distillation step on the CPU and on ``device``: fixed batch, same weights, float32.

    The terms are the bundles' KD (class-balanced) and CWD, and MSKD's FFD and RGD; student dropout off (p = 0) so
    that both devices compute the same function, batch norm in training mode, channels-last as ``distill.json``.
    """
    from mskd.engines import loss_terms
    from mskd.networks import get_network

    configs = teacher_cache.loss_configs()
    terms = {**configs["KD+CWD"], "ffd": configs["MSKD"]["ffd"], "rgd": configs["MSKD"]["rgd"]}
    batch = common.synthetic_batch(sizes.agreement_batch, sizes.size)
    torch.manual_seed(0)
    teacher = get_network(sizes.teacher, 1, common.NUM_CLASSES)

    def losses(on: torch.device, allow_tf32: bool | None) -> dict[str, float]:
        with tf32(allow_tf32):
            trainer = common.distillation_trainer(
                copy.deepcopy(teacher).to(on), sizes.student, batch, terms, channels_last=True
            )
            _no_dropout(_on_device(trainer, on).network)
            return loss_terms(trainer._iteration(trainer, batch))

    cpu = losses(torch.device("cpu"), None)
    strict = losses(device, False)
    default = losses(device, None)
    rows = [
        {
            "term": key,
            "cpu": cpu[key],
            "device_fp32": strict[key],
            "rel_diff_fp32": _relative(cpu[key], strict[key]),
            "device_default": default[key],
            "rel_diff_default": _relative(cpu[key], default[key]),
        }
        for key in cpu
    ]
    worst = max(r["rel_diff_fp32"] for r in rows)
    return {
        "status": "ok" if worst <= rtol else "failed",
        "networks": f"{sizes.teacher} → {sizes.student}",
        "batch": sizes.agreement_batch,
        "size": sizes.size,
        "rtol": rtol,
        "max_rel_diff_fp32": worst,
        "max_rel_diff_default": max(r["rel_diff_default"] for r in rows),
        "default_tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "same_device": device.type == "cpu",
        "terms": rows,
    }


# --- (d) torchrun over >= 2 GPUs ----------------------------------------------------------------------------------


def torchrun_command(nproc: int, bundle: Path, files: list[str], overrides: dict[str, Any]) -> list[str]:
    """``torchrun --nproc_per_node=<nproc> --standalone -m monai.bundle run`` over ``files`` with ``overrides``."""
    config = "[" + ",".join(f"'{f if os.path.isabs(f) else bundle / 'configs' / f}'" for f in files) + "]"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"]
    cmd += ["-m", "monai.bundle", "run", "--config_file", config, "--bundle_root", str(bundle)]
    return cmd + [arg for key, value in overrides.items() for arg in (f"--{key}", str(value))]


def check_multi_gpu(sizes: Sizes, device: torch.device, workdir: Path, clock: Clock, iterations: int = 20) -> dict:
    """``multi_gpu_distill.json`` under torchrun on every visible GPU (nccl): 1 training case per rank, 1 step per
    epoch, ``iterations`` epochs; each rank's iterations and parameter sum (replicas in sync) are recorded."""
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if count < 2:
        return {"status": "skipped", "reason": f"needs >= 2 CUDA devices; {count} visible"}
    if clock.left() <= 30:
        return clock.skipped()
    from mskd.data.phantom import generate_phantom_dataset
    from mskd.networks import get_network
    from mskd.tracking import run_name

    root = workdir / "multi_gpu"
    generate_phantom_dataset(
        root / "data", task="synapse", cases=2 * count + 1, seed=3, size=sizes.phantom_size, test_cases=1
    )
    (root / "models").mkdir(parents=True)
    torch.manual_seed(0)  # distillation needs the teacher's architecture and some weights
    teacher_ckpt = root / "models" / f"{run_name(sizes.teacher, 'teacher', 0)}.pt"
    torch.save(get_network(sizes.teacher, 1, common.NUM_CLASSES).state_dict(), teacher_ckpt)
    recorder = {"_target_": "mskd.distributed.RecordSamples", "out_dir": str(root / "samples")}
    record = root / "record.json"
    record.write_text(json.dumps({"+train#handlers": {"record": {**recorder, "name": "train", "network": "@network"}}}))
    files = ["train_teacher.json", "distill.json", "multi_gpu_distill.json", str(record)]
    overrides = {
        "dataset_dir": root / "data",
        "output_dir": root / "output",
        "ckpt_dir": root / "models",
        "teacher": sizes.teacher,
        "student": sizes.student,
        "image_size": sizes.stack_image_size,
        "max_epochs": iterations,
        "val_interval": iterations,
        "batch_size": 1,
        "slices_per_volume": sizes.multi_gpu_slices,
        "num_val_cases": count,
        "mlflow": False,
    }
    cmd = torchrun_command(count, common.ROOT / "bundles" / "mskd_synapse", files, overrides)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    timeout = max(30.0, clock.left())
    start = time.perf_counter()
    # own process group, so that a timeout ends torchrun's workers too
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,
    ) as popen:
        try:
            log, _ = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            log, _ = popen.communicate()
    wall = time.perf_counter() - start
    ranks = []
    for rank in range(count):
        path = root / "samples" / f"train-rank{rank}.json"
        epochs = json.loads(path.read_text())["epochs"] if path.is_file() else []
        last = epochs[-1] if epochs else {}
        ranks.append({"iterations": sum(e["iterations"] for e in epochs), "parameter_sum": last.get("parameter_sum")})
    result: dict[str, Any] = {"nproc": count, "backend": "nccl", "command": cmd, "wall_s": wall, "ranks": ranks}
    result["returncode"] = popen.returncode
    result["in_sync"] = len({r["parameter_sum"] for r in ranks}) == 1 and ranks[0]["parameter_sum"] is not None
    ok = popen.returncode == 0 and result["in_sync"] and all(r["iterations"] == iterations for r in ranks)
    result["images_per_s"] = iterations * count * sizes.multi_gpu_slices / wall  # start-up and validation included
    result["status"] = "ok" if ok else "failed"
    if not ok:
        result["log_tail"] = log[-3000:]
    return result


# --- (e) projection and report ------------------------------------------------------------------------------------


def projection(throughput: dict[str, Any]) -> dict[str, Any]:
    """Wall time of a 150-epoch Synapse distillation: the measured KD+CWD fp16 step × steps per epoch × epochs."""
    steps = math.ceil(RECIPE["training_slices"] / RECIPE["batch"])
    out: dict[str, Any] = {**RECIPE, "steps_per_epoch": steps}
    by_variant = {r["variant"]: r for r in throughput.get("rows", []) if r["step"] == "distillation" and "step_s" in r}
    for teacher in ("live", "cached"):
        row = by_variant.get(f"KD+CWD, fp16, {teacher}")
        if row is not None:
            out[f"{teacher}_step_s"], out["measured_batch"] = row["step_s"], row["batch"]
            out[f"{teacher}_hours"] = row["step_s"] * steps * RECIPE["epochs"] / 3600
    out["status"] = "ok" if "live_hours" in out else "skipped"
    if "live_hours" not in out:
        out["reason"] = "no distillation step was measured"
    out["assumption"] = (
        f"{RECIPE['training_slices']} training slices / batch {RECIPE['batch']} = {steps} steps per epoch × "
        f"{RECIPE['epochs']} epochs of the measured distillation step (the bundles' default loss KD+CWD, fp16 AMP, "
        "channels-last, one GPU); data loading, validation and checkpointing excluded (data loading is hidden only "
        "with enough loader workers: see the data pipeline section); 'live' = teacher every step (random "
        "augmentation, the bundles' default), 'cached' = every slice a cache hit (augment: false, after the first "
        "epoch)"
    )
    return out


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "—" if value is None else format(value, spec) if isinstance(value, float) else str(value)


def markdown(parts: dict[str, Any], meta: dict[str, Any]) -> str:
    """The section written into docs/performance.md (and printed)."""
    lines = [
        f"Measured by `benchmarks/gpu_check.py` on {meta['device_name']} (`{meta['device']}`), torch {meta['torch']}"
        f" (CUDA {meta['cuda']}), {meta['elapsed_s']:.0f} s of a {meta['budget_s']:.0f} s budget"
        + (". **Tiny run (`--tiny`): not a result.**" if meta["tiny"] else "."),
        "",
    ]
    stacks = parts["stacks"]
    lines += [
        f"**Bundle stacks** ({stacks['status']}{': ' + stacks['error'] if 'error' in stacks else ''}): phantom data, "
        "`mlflow=False`, through `mskd.bundle.Bundle.run`.",
        "",
        "| bundle | stack | mode | autocast | grad scaler | channels_last | compile | teacher_autocast | iterations "
        "| loss / test Dice | s | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in stacks.get("runs", []):
        score = r.get("loss", {}).get("loss", r.get("test_mean_dice"))
        compiled = f"{r['compile']} ({r['compile_backend']})" if r.get("compile") else r.get("compile")
        autocast = r.get("autocast") or ("amp on, no autocast on this device" if r.get("amp") else None)
        lines.append(
            f"| {r['bundle']} | {r['stack']} | {r['mode']} | {_fmt(autocast)} | {_fmt(r.get('grad_scaler'))} "
            f"| {_fmt(r.get('channels_last'))} | {_fmt(compiled)} | {_fmt(r.get('teacher_autocast'))} "
            f"| {_fmt(r.get('iterations'))} | {_fmt(score, '.4f')} | {_fmt(r.get('seconds'), '.1f')} "
            f"| {r['status']}{': ' + r['error'] if 'error' in r else ''} |"
        )
    throughput = parts["throughput"]
    lines += [
        "",
        f"**Throughput** (images/s = batch ÷ median step; peak = `torch.cuda.max_memory_allocated`, network weights "
        f"and optimiser state included; {throughput.get('repeats')} rounds after {throughput.get('warmup')} warm-up):",
        "",
        "| step | networks | variant | size | batch | ms / step | images/s | peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in throughput.get("rows", []):
        step_ms = r["step_s"] * 1e3 if "step_s" in r else None
        lines.append(
            f"| {r['step']} | {r['network']} | {r['variant']} | {r['size']}² | {r['batch']} | {_fmt(step_ms, '.1f')} "
            f"| {_fmt(r.get('images_per_s'), '.1f')} | {_fmt(r.get('peak_mib'), '.0f')} |"
        )
    agreement = parts["cpu_vs_device"]
    if "terms" in agreement:
        lines += [
            "",
            f"**CPU vs device** ({agreement['status']}: largest relative difference in float32 with TF32 off "
            f"{agreement['max_rel_diff_fp32']:.2e}, tolerance {agreement['rtol']:.0e}; with torch's default TF32 "
            f"settings {agreement['max_rel_diff_default']:.2e}): one distillation step, {agreement['networks']}, "
            f"batch {agreement['batch']}, {agreement['size']}², same weights."
            + (" The device is the CPU here: equal by construction." if agreement["same_device"] else ""),
            "",
            "| term | CPU | device, fp32 | rel. diff | device, default TF32 | rel. diff |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['term']} | {r['cpu']:.6g} | {r['device_fp32']:.6g} | {r['rel_diff_fp32']:.1e} "
            f"| {r['device_default']:.6g} | {r['rel_diff_default']:.1e} |"
            for r in agreement["terms"]
        ]
    else:
        lines += ["", f"**CPU vs device**: {agreement['status']} ({agreement.get('reason', agreement.get('error'))})."]
    multi = parts["multi_gpu"]
    if "ranks" not in multi:
        why = multi.get("reason", multi.get("error"))
        lines += ["", f"**Multi-GPU** (torchrun, nccl): {multi['status']}: {why}."]
    else:
        lines += [
            "",
            f"**Multi-GPU** (torchrun --nproc_per_node={multi['nproc']}, nccl, `multi_gpu_distill.json`): "
            f"{multi['status']}; iterations per rank {[r['iterations'] for r in multi['ranks']]}, replicas in sync: "
            f"{multi['in_sync']}, {multi['wall_s']:.0f} s wall (start-up included).",
        ]
    proj = parts["projection"]
    if "live_hours" in proj:
        lines += [
            "",
            f"**Projected 150-epoch Synapse distillation**: {proj['live_hours']:.1f} h with the live teacher, "
            f"{proj.get('cached_hours', float('nan')):.1f} h with every slice cached. Assumption: "
            f"{proj['assumption']}.",
        ]
    else:
        lines += ["", f"**Projected 150-epoch Synapse distillation**: {proj['status']} ({proj['reason']})."]
    return "\n".join(lines)


def _no_cuda(device: torch.device) -> str | None:
    """Why ``device`` cannot be used, in one line, or ``None``."""
    if device.type != "cuda":
        return None
    if torch.version.cuda is None:
        return (
            f"gpu_check: --device {device} but torch {torch.__version__} is a CPU-only build; install a CUDA build "
            "of torch, or run `--device cpu --tiny` for a smoke run"
        )
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0 or (device.index or 0) >= count:
        return (
            f"gpu_check: --device {device} but {count} CUDA device(s) are visible (CUDA_VISIBLE_DEVICES, driver); "
            "run on a GPU machine, or `--device cpu --tiny` for a smoke run"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the check with the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    p = common.parser(__doc__.splitlines()[0], None, "gpu_check", "docs/performance.md", 10, size=None, threads=8)
    p.add_argument("--device", type=torch.device, default=torch.device("cuda"), help="cuda, cuda:1, cpu (default cuda)")
    p.add_argument("--tiny", dest="quick", action="store_true", help="tiny sizes (32², batch 2, unet/tiny_unet)")
    p.add_argument("--budget-s", type=float, default=BUDGET_S, help="parts after this many seconds are skipped")
    p.add_argument("--rtol", type=float, default=RTOL, help="CPU vs device tolerance in float32 (TF32 off)")
    p.add_argument("--all-modes", action="store_true", help="run both precision modes on both bundles")
    args = p.parse_args(argv)
    if (reason := _no_cuda(args.device)) is not None:
        print(reason, file=sys.stderr)
        return 2
    args = common.parse_args(p, quick={}, argv=argv)
    given = sys.argv[1:] if argv is None else argv
    if args.device.type != "cuda" and not any(a == "--doc" or a.startswith("--doc=") for a in given):
        args.doc = None  # a CPU run does not replace the GPU section of the doc
    if args.device.type == "cuda":
        args.device = torch.device("cuda", args.device.index if args.device.index is not None else 0)
        torch.cuda.set_device(args.device)
    sizes = TINY if args.quick else FULL
    modes = {b: tuple(MODES) for b in BUNDLES} if args.all_modes else BUNDLE_MODES
    clock = Clock(args.budget_s)
    device_name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    meta = common.machine(
        args,
        device=str(args.device),
        device_name=device_name,
        cuda=torch.version.cuda,
        gpus_visible=torch.cuda.device_count() if torch.cuda.is_available() else 0,
    )
    meta.update(tiny=args.quick, budget_s=args.budget_s, sizes=asdict(sizes), modes=MODES, bundle_modes=modes)
    parts: dict[str, Any] = {}
    seconds: dict[str, float] = {}

    def part(name: str, run: Callable[[], dict]) -> None:
        start = time.perf_counter()
        if clock.left() <= 0:
            parts[name] = clock.skipped()
        else:
            try:
                parts[name] = run()
            except Exception as error:  # one part failing must not lose the others' results
                parts[name] = {"status": "failed", "error": f"{type(error).__name__}: {error}"[-600:]}
        seconds[name] = time.perf_counter() - start
        print(f"[gpu-check] {name}: {parts[name]['status']} ({seconds[name]:.0f} s)", flush=True)

    with tempfile.TemporaryDirectory(prefix="mskd-gpu-check-") as tmp, warnings.catch_warnings():
        if args.device.type == "cpu":  # MONAI's autocast("cuda") and GradScaler say so at every run
            warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
            warnings.filterwarnings("ignore", message=".*torch.cuda.amp.GradScaler.*")
        workdir = Path(tmp)
        part("cpu_vs_device", lambda: check_cpu_vs_device(sizes, args.device, args.rtol))
        part("throughput", lambda: check_throughput(sizes, args.device, args.warmup, args.repeats, clock))
        part("stacks", lambda: check_stacks(sizes, args.device, workdir, clock, modes))
        part("multi_gpu", lambda: check_multi_gpu(sizes, args.device, workdir, clock))
    parts["projection"] = projection(parts["throughput"])
    meta.update(elapsed_s=clock.elapsed(), part_seconds=seconds, over_budget=clock.left() < 0)
    common.record(args, meta, parts, markdown, (BEGIN, END), key="parts")
    print(markdown(parts, meta))
    complete = all(p["status"] in ("ok", "skipped") and not p.get("budget_spent") for p in parts.values())
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
