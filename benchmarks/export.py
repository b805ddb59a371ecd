"""Benchmark the exports: CPU latency of eager PyTorch, TorchScript and ONNX Runtime, and their parity with eager.

Writes ``docs/benchmarks/export.json`` and the table of ``docs/export.md`` (between the markers), e.g.::

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 python benchmarks/export.py

Each network is built with random weights (latency does not depend on them), exported at ``--size``² with
``mskd.export.export_onnx`` and scripted with MONAI's ``convert_to_torchscript`` (what ``monai.bundle ckpt_export``
writes; traced instead, and marked so, for networks that ``torch.jit.script`` cannot compile), then loaded back from
the files. Latency: batch 1, 1×size×size input, ``--threads`` threads for all three runtimes (``torch.set_num_threads``;
onnxruntime ``intra_op_num_threads``, sequential execution), ``--warmup`` runs each, then ``--repeats`` rounds that time
eager, TorchScript and ONNX Runtime one after the other (``common.timed_rounds``), so that load from other processes
hits the three alike; the median per runtime. Parity: max |Δ| of the logits against eager on one random batch-1 input.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import common  # benchmarks/common.py (the scripts run from this folder)
import onnxruntime as ort
import torch
from monai.networks.utils import convert_to_torchscript

from mskd.export import check_onnx_parity, check_torchscript_parity, export_onnx
from mskd.networks import count_parameters, get_network

NETWORKS = ["tiny_unet", "enet", "erfnet", "espnet", "mobilenetv2_unet", "transunet_small", "unet", "transunet"]
BEGIN, END = "<!-- export-table:begin -->", "<!-- export-table:end -->"


def _torchscript(network: torch.nn.Module, path: Path, example: torch.Tensor) -> str:
    """Script ``network`` into ``path`` as ``ckpt_export`` does; trace when scripting fails. Returns the method."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            convert_to_torchscript(network, filename_or_obj=str(path))
            return "script"
        except RuntimeError:
            convert_to_torchscript(network, filename_or_obj=str(path), use_trace=True, inputs=[example])
            return "trace"


def measure(name: str, size: int, threads: int, warmup: int, repeats: int, workdir: Path) -> dict:
    """Export one network and time its three runtimes at batch 1, ``size``² (9 classes, 1 input channel)."""
    torch.manual_seed(0)
    network = get_network(name, in_channels=1, out_channels=9).eval()
    x = torch.rand(1, 1, size, size)

    start = time.perf_counter()
    onnx_path = export_onnx(network, workdir / f"{name}.onnx", image_size=size)
    onnx_export_s = time.perf_counter() - start
    ts_path = workdir / f"{name}.ts"
    start = time.perf_counter()
    ts_method = _torchscript(network, ts_path, x)
    ts_export_s = time.perf_counter() - start

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # no busy-waiting of onnxruntime's threads after a run: they would take the cores from the next eager run
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        scripted = torch.jit.load(str(ts_path)).eval()
    feed = {"image": x.numpy()}

    def eager() -> None:
        network(x)

    def torchscript() -> None:
        scripted(x)

    def onnxruntime() -> None:
        session.run(["logits"], feed)

    with torch.inference_mode():
        timed = common.timed_rounds(
            {"eager": eager, "torchscript": torchscript, "onnxruntime": onnxruntime}, warmup, repeats
        )
    latency = {k: 1000 * v["wall_s"] for k, v in timed.items()}
    return {
        "name": name,
        "params": count_parameters(network),
        "latency_ms": latency,
        "ratio_onnxruntime_to_eager": latency["onnxruntime"] / latency["eager"],
        "ratio_torchscript_to_eager": latency["torchscript"] / latency["eager"],
        "torchscript_method": ts_method,
        "max_abs_diff": {
            "onnx": check_onnx_parity(network, onnx_path, size, batch=1, seed=1),
            "torchscript": check_torchscript_parity(network, ts_path, size, batch=1, seed=1),
        },
        "export_s": {"onnx": onnx_export_s, "torchscript": ts_export_s},
        "size_mb": {"onnx": onnx_path.stat().st_size / 2**20, "torchscript": ts_path.stat().st_size / 2**20},
    }


def markdown(rows: list[dict], meta: dict) -> str:
    """The table written into docs/export.md."""
    lines = [
        common.provenance("export.py", meta),
        "",
        f"onnxruntime {meta['onnxruntime']}; batch 1, 1×{meta['size']}×{meta['size']}, 9 classes, wall-clock latency "
        "of the three runtimes timed side by side.",
        "",
        "| network | params | eager (ms) | TorchScript (ms) | ONNX Runtime (ms) | **ORT ÷ eager** | TS ÷ eager "
        "| ONNX max \\|Δ\\| | TS max \\|Δ\\| | ONNX file (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lat, diff = r["latency_ms"], r["max_abs_diff"]
        ts = f"{lat['torchscript']:.1f}" + (" (trace)" if r["torchscript_method"] == "trace" else "")
        lines.append(
            f"| {r['name']} | {r['params']:,} | {lat['eager']:.1f} | {ts} | {lat['onnxruntime']:.1f} | "
            f"**{r['ratio_onnxruntime_to_eager']:.2f}** | {r['ratio_torchscript_to_eager']:.2f} | "
            f"{diff['onnx']:.1e} | {diff['torchscript']:.1e} | {r['size_mb']['onnx']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark with the command line ``argv`` (default ``sys.argv[1:]``)."""
    p = common.parser(__doc__.splitlines()[0], NETWORKS, "export", "docs/export.md", repeats=20)
    args = common.parse_args(p, quick={"networks": ["tiny_unet"], "size": 64}, argv=argv)

    meta = common.machine(args, onnxruntime=ort.__version__)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.networks:
            rows.append(measure(name, args.size, args.threads, args.warmup, args.repeats, Path(workdir)))
            row, lat = rows[-1], rows[-1]["latency_ms"]
            print(
                f"{name:18s} eager {lat['eager']:8.1f} ms  TS {lat['torchscript']:8.1f} ms  "
                f"ORT {lat['onnxruntime']:8.1f} ms  ORT/eager {row['ratio_onnxruntime_to_eager']:.2f}  "
                f"|Δ| ONNX {row['max_abs_diff']['onnx']:.1e} TS {row['max_abs_diff']['torchscript']:.1e}",
                flush=True,
            )
    common.record(args, meta, rows, markdown, (BEGIN, END))


if __name__ == "__main__":
    main()
