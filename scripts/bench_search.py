"""Benchmark exact top-k search on one device: jaxrank vs faiss-cpu ``IndexFlatIP`` vs numpy.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python scripts/bench_search.py \\
        --out docs/bench/search.json

Same process, same data (Gaussian rows made chunk by chunk from a seeded generator), inner
product, JAX and faiss with their default threads; each method is warmed up, then timed
``--repeats`` times round robin across the methods and reported as the median. Reports
queries/s, the speed-up over faiss, the achieved GFLOP/s (2*Q*N*D / time) beside this
machine's measured matmul peak (best of numpy/OpenBLAS and XLA on a large f32 matmul), how
often the returned ids equal faiss's, and the peak resident memory of a streaming index build
measured in a fresh process (against an in-memory build from a full host array). Writes JSON
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_machine import contention as measured_contention
from bench_machine import cpu_model, cpu_seconds

CHUNK = 65536  # rows generated (and streamed) at a time


def _chunk(seed: int, i: int, rows: int, dim: int) -> np.ndarray:
    return np.random.default_rng([seed, i]).standard_normal((rows, dim), dtype=np.float32)


def _chunks(seed: int, n: int, dim: int):
    for i, start in enumerate(range(0, n, CHUNK)):
        yield _chunk(seed, i, min(CHUNK, n - start), dim)


def _database(seed: int, n: int, dim: int) -> np.ndarray:
    x = np.empty((n, dim), np.float32)
    for i, start in enumerate(range(0, n, CHUNK)):
        x[start : start + CHUNK] = _chunk(seed, i, min(CHUNK, n - start), dim)
    return x


def _best_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _openblas(library_fragment: str, prefix: str) -> dict:
    """Core type and threads of a loaded OpenBLAS (what threadpoolctl would report)."""
    maps = Path("/proc/self/maps").read_text().splitlines()
    paths = sorted({line.split()[-1] for line in maps if library_fragment in line})
    if not paths:
        return {}
    lib = ctypes.CDLL(paths[0])
    corename = getattr(lib, f"{prefix}get_corename{'64_' if 'scipy' in prefix else ''}")
    threads = getattr(lib, f"{prefix}get_num_threads{'64_' if 'scipy' in prefix else ''}")
    corename.restype = ctypes.c_char_p
    return {"library": Path(paths[0]).name, "core": corename().decode(), "threads": threads()}


def machine_info() -> dict:
    import faiss
    import jax

    cpu = cpu_model()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "numpy": np.__version__,
        "numpy_openblas": _openblas("scipy_openblas", "scipy_openblas_"),
        "faiss": faiss.__version__,
        "faiss_openblas": _openblas("libopenblas", "openblas_"),
        "faiss_threads": faiss.omp_get_max_threads(),
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
    }


def matmul_peak(repeats: int) -> dict:
    """Best GFLOP/s (fastest of ``repeats`` runs: a peak, not a typical rate) of a large f32
    matmul, numpy (OpenBLAS) and XLA, square and search-shaped."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    rng = np.random.default_rng(0)
    shapes = {"4096x4096x4096": (4096, 4096, 4096), "1024x512x16384": (1024, 512, 16384)}
    out = {}
    dot = jax.jit(lambda x, y: lax.dot_general(x, y, (((1,), (1,)), ((), ()))))
    for name, (m, kk, n) in shapes.items():
        a = rng.standard_normal((m, kk), dtype=np.float32)
        b = rng.standard_normal((n, kk), dtype=np.float32)
        flops = 2 * m * n * kk
        bt = np.ascontiguousarray(b.T)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        numpy_s = _best_seconds(lambda a=a, bt=bt: a @ bt, repeats)
        xla_s = _best_seconds(lambda ja=ja, jb=jb: jax.block_until_ready(dot(ja, jb)), repeats)
        out[f"numpy {name}"] = flops / numpy_s / 1e9
        out[f"xla {name}"] = flops / xla_s / 1e9
    out["peak"] = max(out.values())
    return out


def numpy_topk(x: np.ndarray, q: np.ndarray, k: int, block: int = 65536):
    """Blocked matmul + argpartition: the best-known plain-numpy exact search."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, len(x), block):
        s = q @ x[start : start + block].T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        i = np.concatenate([best_i, part + start], axis=1)
        keep = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, keep, 1), np.take_along_axis(i, keep, 1)
    return best_s, best_i


MATMUL_ONLY = "numpy matmul only (no top-k)"


def matmul_only(x: np.ndarray, q: np.ndarray, out: np.ndarray) -> None:
    """The same products with no selection at all: the sustained BLAS rate on this work, timed
    in the same rounds as the searches (the peak above is a best-of-5 burst)."""
    block = out.shape[1]
    for start in range(0, len(x) - block + 1, block):
        np.matmul(q, x[start : start + block].T, out=out)
    rest = len(x) % block
    if rest:
        np.matmul(q, x[len(x) - rest :].T, out=out[:, :rest])


def run_size(n: int, args, peak: float) -> list[dict]:
    import faiss
    import jax

    from jaxrank.parallel import make_mesh
    from jaxrank.search import Index

    d, nq, k = args.dim, args.queries, args.k
    x = _database(args.seed, n, d)
    q = np.random.default_rng([args.seed, 10**6]).standard_normal((nq, d), dtype=np.float32)
    flops = 2 * nq * n * d
    repeats = args.repeats if n <= 100_000 else args.large_repeats

    flat = faiss.IndexFlatIP(d)
    flat.add(x)
    methods = {"faiss IndexFlatIP": lambda: flat.search(q, k)}
    mesh = make_mesh(1, 1, jax.devices()[:1])
    for dtype in ("float32", "bfloat16")[: 1 + args.bf16]:
        index = Index.from_array(x, mesh=mesh, dtype=dtype, block_rows=args.block_rows)
        methods[f"jaxrank exact ({dtype})"] = lambda index=index: index.search(q, k)
        if args.approx and dtype == "float32":
            approx = lambda index=index: index.search(q, k, mode="approx")
            methods["jaxrank approx (0.95)"] = approx
    methods["numpy matmul+argpartition"] = lambda: numpy_topk(x, q, k)
    out = np.empty((nq, 16384), np.float32)
    methods[MATMUL_ONLY] = lambda: matmul_only(x, q, out)

    # Warm every method up, then time them round robin: a neighbour's job that starts during
    # the run slows every method alike instead of whichever happened to be running.
    results = {name: fn() for name, fn in methods.items()}
    times: dict[str, list[float]] = {name: [] for name in methods}
    before = cpu_seconds()
    for _ in range(repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        print(f"  {' '.join(f'{min(t):.3f}' for t in times.values())}", flush=True)
    rows = []
    for name, ts in times.items():
        seconds = float(np.median(ts))
        rows.append(
            {
                "method": name,
                "n": n,
                "dim": d,
                "queries": nq,
                "k": k,
                "seconds": seconds,
                "all_seconds": ts,
                "queries_per_s": nq / seconds,
                "gflops": flops / seconds / 1e9,
                "fraction_of_peak": flops / seconds / 1e9 / peak,
            }
        )
        print(f"  {name:28s} {seconds:8.3f} s  {flops / seconds / 1e9:7.1f} GFLOP/s", flush=True)

    contention = measured_contention(before, cpu_seconds(), sum(map(sum, times.values())))
    print(f"  contention: {contention}", flush=True)
    faiss_scores, faiss_ids = results["faiss IndexFlatIP"]
    faiss_time = rows[0]["seconds"]
    sustained = next(r["gflops"] for r in rows if r["method"] == MATMUL_ONLY)
    for row in rows:
        row["contention"] = contention
        row["fraction_of_sustained_matmul"] = row["gflops"] / sustained
        row["speedup_vs_faiss"] = faiss_time / row["seconds"]
        if row["method"] == MATMUL_ONLY:
            continue
        scores, ids = (np.asarray(a) for a in results[row["method"]])
        row["ids_equal_faiss"] = float(np.mean(ids == faiss_ids))
        row["id_sets_equal_faiss"] = float(
            np.mean([set(a) == set(b) for a, b in zip(ids, faiss_ids, strict=True)])
        )
        row["max_abs_score_diff"] = float(np.max(np.abs(scores - faiss_scores)))
    return rows


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc (``getrusage``'s maxrss would include the
    parent's memory at fork time, which survives the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def child_build(args) -> None:
    """Peak resident memory (VmHWM) of building an index in this fresh process."""
    import jax

    from jaxrank.parallel import make_mesh
    from jaxrank.search import Index

    mesh = make_mesh(1, 1, jax.devices()[:1])
    warm = np.ones((8, args.dim), np.float32)  # start the runtime before the baseline
    Index.from_array(warm, mesh=mesh).search(warm[:1], 1)
    baseline = _status_bytes("VmHWM")
    start = time.perf_counter()
    if args.child_build == "streaming":
        index = Index.from_chunks(
            _chunks(args.seed, args.rows, args.dim), capacity=args.rows, mesh=mesh
        )
    else:
        index = Index.from_array(_database(args.seed, args.rows, args.dim), mesh=mesh)
    jax.block_until_ready(index.database)
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM")
    print(json.dumps({"baseline_rss": baseline, "peak_rss": peak, "seconds": seconds}))


def build_memory(args) -> dict:
    rows, dim = args.build_rows, args.dim
    out = {"rows": rows, "dim": dim, "database_bytes": rows * dim * 4}
    for mode in ("streaming", "in-memory"):
        cmd = [sys.executable, __file__, "--child-build", mode, "--rows", str(args.build_rows)]
        cmd += ["--dim", str(args.dim), "--seed", str(args.seed)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{mode} build failed:\n{done.stderr}")
        out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {mode} build: peak RSS {out[mode]['peak_rss'] / 2**30:.2f} GiB", flush=True)
    return out


def markdown(report: dict) -> str:
    peak = report["matmul_peak"]["peak"]
    lines = [
        f"Matmul peak measured here: {peak:.1f} GFLOP/s (best of numpy/OpenBLAS and XLA).",
        "",
        "| method | N | median s | queries/s | GFLOP/s | % of peak | % of sustained matmul "
        "| vs faiss | ids = faiss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        same = f"{100 * r['ids_equal_faiss']:.2f}%" if "ids_equal_faiss" in r else "-"
        lines.append(
            f"| {r['method']} | {r['n']:,} | {r['seconds']:.3f} | {r['queries_per_s']:,.0f} "
            f"| {r['gflops']:.1f} | {100 * r['fraction_of_peak']:.0f}% "
            f"| {100 * r['fraction_of_sustained_matmul']:.0f}% "
            f"| {r['speedup_vs_faiss']:.2f}x | {same} |"
        )
    for n in sorted({r["n"] for r in report["results"]}):
        c = next(r["contention"] for r in report["results"] if r["n"] == n)
        lines.append(
            f"\nN = {n:,}: during the {c['wall_s']:.0f} s of timed runs, other processes used "
            f"{c['busy_cpu_s_by_others']:.1f} CPU-s and the hypervisor stole "
            f"{c['steal_cpu_s']:.1f} CPU-s (this process: {c['own_cpu_s']:.0f} CPU-s)."
        )
    mem = report.get("build_memory")
    if mem:
        gib = lambda b: f"{b / 2**30:.2f} GiB"
        lines += [
            "",
            f"Index build of {mem['rows']:,} x {mem['dim']} float32 "
            f"({gib(mem['database_bytes'])} of vectors), fresh process, peak RSS:",
            "",
            "| build | peak RSS | RSS before | seconds |",
            "|---|---:|---:|---:|",
        ]
        for mode in ("streaming", "in-memory"):
            m = mem[mode]
            lines.append(
                f"| {mode} | {gib(m['peak_rss'])} | {gib(m['baseline_rss'])} | {m['seconds']:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000", help="database sizes N")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs, small sizes")
    parser.add_argument("--large-repeats", type=int, default=3, help="timed runs, N > 100k")
    parser.add_argument("--block-rows", type=int, default=None, help="jaxrank scan block")
    parser.add_argument("--bf16", type=int, default=1, help="also time bfloat16 storage")
    parser.add_argument("--approx", type=int, default=1, help="also time approximate mode")
    parser.add_argument("--build-rows", type=int, default=1_000_000, help="0: skip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/bench/search.json")
    parser.add_argument("--child-build", choices=("streaming", "in-memory"), help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        sys.exit("unset XLA_FLAGS: the benchmark measures one real CPU device")
    if args.child_build:
        return child_build(args)
    if args.block_rows is None:
        from jaxrank.search.index import DEFAULT_BLOCK_ROWS

        args.block_rows = DEFAULT_BLOCK_ROWS

    report = {"command": " ".join(sys.argv), "load_before": os.getloadavg()}
    report["machine"] = machine_info()
    print(json.dumps(report["machine"], indent=1), flush=True)
    report["matmul_peak"] = matmul_peak(args.repeats)
    print(f"matmul peak {report['matmul_peak']}", flush=True)
    report["results"] = []
    for n in (int(s) for s in args.sizes.split(",")):
        print(f"N = {n:,}", flush=True)
        report["results"] += run_size(n, args, report["matmul_peak"]["peak"])
    if args.build_rows:
        report["build_memory"] = build_memory(args)
    report["load_after"] = os.getloadavg()
    report["table"] = markdown(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(report["table"])
    print(f"load average before {report['load_before']}, after {report['load_after']}")


if __name__ == "__main__":
    main()
